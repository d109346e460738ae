"""``hfmtl config``: the config reference in the terminal (see hfmtl/config/reference.py).

hfmtl config --list [SECTION]   every key of SECTION (all sections without one): type, default,
                                allowed values and help; SECTION is model, tasks, tasks.<type>,
                                sampling, train, peft, balancing or stages
hfmtl config --markdown         the whole reference as Markdown, as docs/config.md holds it
"""

from __future__ import annotations

import argparse


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hfmtl config`` on the `hfmtl` console script's subparsers.

    Example:
        >>> parser = argparse.ArgumentParser(prog="hfmtl")
        >>> config = add_cli(parser.add_subparsers(dest="command"))
        >>> parser.parse_args(["config", "--list", "train"]).list
        'train'
    """
    config = subparsers.add_parser(
        "config",
        help="Print the config reference: every key of every section, with its default and help.",
        description="Print the run config reference, read from the config classes themselves: every key with "
        "its type, default, allowed values and help. Without options: --list.",
    )
    shown = config.add_mutually_exclusive_group()
    shown.add_argument(
        "--list",
        nargs="?",
        const="",
        metavar="SECTION",
        help="The keys of SECTION (model, tasks, tasks.<type>, sampling, train, peft, balancing, stages); all "
        "sections without one.",
    )
    shown.add_argument(
        "--markdown", action="store_true", help="The whole reference as Markdown (what docs/config.md holds)."
    )
    config.set_defaults(handler=_config_command)
    return config


def _config_command(args: argparse.Namespace) -> int:
    from ..config.reference import render_markdown, render_text  # imports the task registry, hence torch

    print(render_markdown() if args.markdown else render_text(args.list or None), end="")
    return 0
