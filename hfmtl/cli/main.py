"""The `hfmtl` console script.

    hfmtl train [--config] CONFIG [section.key=value ...] [--cpu]
    hfmtl eval MODEL_DIR [--config] CONFIG [section.key=value ...] [--output FILE] [--cpu]
    hfmtl analyze [--config] CONFIG --output DIR [--model MODEL_DIR] [--target TASK --sources NAME=PATH ...]
    hfmtl cv [--config] CONFIG --folds K [--output DIR] [section.key=value ...] [--cpu]
    hfmtl export MODEL_DIR --task TASK --out DIR [--overwrite]
    hfmtl predict MODEL --task TASK --input FILE|- --output FILE|-
    hfmtl info MODEL
    hfmtl serve MODEL [--host H] [--port P] [--max-batch-size N] [--max-wait-ms MS] [--no-batching]
    hfmtl push MODEL_DIR REPO_ID [--private] [--revision BRANCH]
    hfmtl config [--list [SECTION]] [--markdown]

`train`, `eval`, `analyze` and `cv` run the recipe of the same name (``recipes/train.py``,
``recipes/evaluate.py``...) with the rest of the line: the recipes are the one place where the steps of
a run are written, top to bottom, and the console script is a shortcut to them (the same arguments, in
any order; see hfmtl/cli/args.py). Several processes: ``accelerate launch -m hfmtl.cli train CONFIG``. `export`
writes one task as a standard transformers model (see `hfmtl.publish.export`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import exit_status_of
from .config import add_cli as add_config_cli
from .predict import add_cli as add_inference_cli
from .push import add_cli as add_hub_cli
from .serve import add_cli as add_serve_cli

_RECIPES = {"train": "train", "eval": "evaluate", "analyze": "analyze", "cv": "cv"}


def _run_recipe(name: str, argv: list[str]) -> int:
    # recipes/ is installed as hfmtl.recipes (pyproject.toml): the same files in a checkout and a wheel
    recipe = importlib.import_module(f"hfmtl.recipes.{_RECIPES[name]}")
    return int(recipe.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hfmtl` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="hfmtl", description="Multi-task and transfer learning for NLP.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="Train a multi-task model from a YAML config.", add_help=False)
    train.add_argument("config", help="YAML run config (see configs/).")
    evaluate = sub.add_parser("eval", help="Evaluate a saved model on the tasks of a config.", add_help=False)
    evaluate.add_argument("model", help="Saved model directory.")
    analyze = sub.add_parser("analyze", help="Measure how the tasks of a config relate.", add_help=False)
    analyze.add_argument("config", help="YAML run config naming the tasks.")
    cv = sub.add_parser("cv", help="K-fold cross-validation over the tasks' train splits.", add_help=False)
    cv.add_argument("config", help="YAML run config (without stages).")
    export = sub.add_parser("export", help="Export one task to a standard transformers model (for pipeline()).")
    export.add_argument("model", help="Saved hfmtl model directory (with its tokenizer).")
    export.add_argument("--task", required=True, help="Name of the task to export.")
    export.add_argument("--out", required=True, help="Directory to write the standard model and tokenizer to.")
    export.add_argument("--overwrite", action="store_true", help="Replace --out if it is not empty.")
    export.set_defaults(handler=_export)
    add_inference_cli(sub)  # hfmtl predict | info
    add_hub_cli(sub)  # hfmtl push
    add_serve_cli(sub)  # hfmtl serve
    add_config_cli(sub)  # hfmtl config
    if argv and argv[0] in _RECIPES:  # the recipe parses its own line (and prints its own --help)
        return exit_status_of(lambda: _run_recipe(argv[0], argv[1:]))
    args = parser.parse_args(argv)  # prints usage / help and exits on a bad command line
    return exit_status_of(lambda: args.handler(args))


def _export(args: argparse.Namespace) -> int:
    from ..publish.export import export_model_dir  # the model stack: only for this command

    out = export_model_dir(args.model, args.task, args.out, overwrite=args.overwrite)
    print(f"exported task {args.task!r} of {args.model} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
