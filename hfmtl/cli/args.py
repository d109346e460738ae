"""What the recipes' command lines share: the run config, given as ``--config CONFIG`` or as the first
argument, and ``section.key=value`` overrides anywhere on the line (before or after the options).

Example:
    >>> parser = argparse.ArgumentParser(prog="train")
    >>> add_config_arguments(parser)
    >>> args = parse_with_config(parser, ["configs/tiny.yaml", "train.max_steps=5"])
    >>> args.config, args.overrides
    ('configs/tiny.yaml', ['train.max_steps=5'])
    >>> parse_with_config(parser, ["train.seed=1", "--config", "a.yaml", "tasks.rte.batch_size=4"]).overrides
    ['train.seed=1', 'tasks.rte.batch_size=4']
"""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, what: str = "YAML run config (see configs/)") -> None:
    """Add ``--config`` and the ``section.key=value`` overrides to a recipe's parser."""
    parser.add_argument("--config", metavar="CONFIG", help=f"{what}; it may also come first, without --config.")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="Override config values anywhere on the line, e.g. train.learning_rate=3e-5 tasks.rte.batch_size=16",
    )


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse options and positionals in any order; the first positional without ``=`` is the config
    when ``--config`` was not given. A missing config or a stray word is a usage error (exit 2)."""
    args = parser.parse_intermixed_args(argv)
    if args.config is None and args.overrides and "=" not in args.overrides[0]:
        args.config = args.overrides.pop(0)
    if args.config is None:
        parser.error("give the run config: --config CONFIG, or CONFIG as the first argument")
    stray = [item for item in args.overrides if "=" not in item]
    if stray:
        parser.error(f"{stray[0]!r} is not an override: write section.key=value (e.g. train.max_steps=100)")
    return args
