#!/usr/bin/env python
"""K-fold cross-validation of a multi-task training over each task's train split.

    hfmtl cv configs/glue.yaml --folds 5 --output outputs/cv/glue [section.key=value ...]
    python recipes/cv.py --config configs/tiny.yaml --folds 3 train.max_steps=20

Reads top to bottom: config -> each task's train rows (cut to `max_train_samples` first) -> K folds per
task from a seeded shuffle (`train.seed`: the same folds on every run) -> for fold k, every task trains on
its rows outside fold k and is evaluated on fold k, with the config's training settings; the task's own
validation split is not used. Each fold is an ordinary training (recipes/train.py's `train_stage`) in
``<output>/fold-<k>/``, its rows in Parquet files under ``fold-<k>/data/`` (hfmtl/training/cross_validation.py).
The evaluation of each fold's saved model (its best by `eval/mean`, or its last without
`load_best_model_at_end`) is read back from its ``metrics.json``; ``<output>/cv_results.json`` holds them
and their mean ± sample standard deviation per task and metric (and of `eval/mean`), printed as a table.

Rerun with ``train.resume_from_checkpoint=latest`` to skip the folds that finished and resume the one that
was interrupted from its newest checkpoint. A config with `stages:` is refused: cross-validate one stage
by writing it as a config of its own. Several processes: ``accelerate launch recipes/cv.py ...``.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from accelerate import PartialState

from hfmtl import load_config
from hfmtl.cli.args import add_config_arguments, parse_with_config
from hfmtl.config.stages import stage_is_complete
from hfmtl.errors import ConfigError, exit_status_of
from hfmtl.files import write_json_atomic
from hfmtl.training.cross_validation import (
    assign_folds,
    check_num_folds,
    fold_config,
    format_table,
    load_train_rows,
    saved_evaluation,
    summarize,
    write_fold_data,
)
from hfmtl.training.setup import build_accelerator, check_output_dir, logger

# the one training loop of the project, shared with `hfmtl train`
train_stage = runpy.run_path(str(Path(__file__).with_name("train.py")), run_name="hfmtl_recipe_train")["train_stage"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="K-fold cross-validation of a multi-task training over each task's train split (hfmtl).",
        epilog="Example: hfmtl cv configs/glue.yaml --folds 5 --output outputs/cv/glue train.max_steps=500",
    )
    add_config_arguments(parser, "YAML run config (see configs/); no `stages:`")
    parser.add_argument("--folds", type=int, required=True, help="K: 2 <= K <= the smallest task's train rows.")
    parser.add_argument("--output", help="Directory for fold-<k>/ and cv_results.json (default: train.output_dir).")
    parser.add_argument("--cpu", action="store_true", help="Run on the CPU even if a GPU is present.")
    return parse_with_config(parser, argv)


def run(args: argparse.Namespace) -> dict:
    """Every fold, then the summary; returns what ``cv_results.json`` holds."""
    # 1. Config: validated, and checked for what cross-validation cannot do, before anything is loaded.
    config = load_config(args.config, args.overrides)
    if config.stages is not None:
        raise ConfigError(
            f"{args.config} has `stages:`; cross-validation runs one training: write the stage to "
            "cross-validate as a config of its own (its tasks and train settings, model.init_from for its start)"
        )
    if args.folds < 2:
        raise ConfigError(f"--folds {args.folds}: cross-validation needs at least 2 folds")
    streamed = [name for name, task in config.tasks.items() if task.streaming]
    if streamed:
        raise ConfigError(
            f"task {streamed[0]!r} is streamed: cross-validation cuts every task's rows into folds; set "
            f"tasks.{streamed[0]}.streaming=false"
        )
    resume = config.train.resume_from_checkpoint
    if resume not in (None, "latest"):
        raise ConfigError(
            f"train.resume_from_checkpoint={resume!r}: cross-validation resumes with 'latest' (each fold from "
            "its own newest checkpoint)"
        )
    output = Path(args.output or config.train.output_dir)
    config.train.output_dir = str(output)
    check_output_dir(config)

    # 2. The folds: each task's train rows (after max_train_samples), shuffled with train.seed, cut in K.
    rows = load_train_rows(config)
    check_num_folds(args.folds, {name: len(ds) for name, ds in rows.items()})
    folds = {name: assign_folds(len(ds), args.folds, config.train.seed) for name, ds in rows.items()}
    configs = [fold_config(config, k, output) for k in range(args.folds)]

    # 3. One ordinary training per fold, in <output>/fold-<k>/ (one Accelerator per fold, as per stage).
    accelerator = None
    for k, fold in enumerate(configs):
        if resume == "latest" and stage_is_complete(fold.train.output_dir):
            print(f"Fold {k} finished in an earlier run: skipped ({fold.train.output_dir})")
            continue
        accelerator = build_accelerator(fold, cpu=args.cpu)
        logger.info("=== fold %d of %d: held out %s ===", k, args.folds, {n: len(f[k]) for n, f in folds.items()})
        if accelerator.is_main_process:
            write_fold_data(rows, folds, k, output)
        accelerator.wait_for_everyone()
        train_stage(fold, accelerator)

    # 4. The evaluation of each fold's saved model, and the mean ± std over folds.
    results = {}
    if (accelerator or PartialState(cpu=args.cpu)).is_main_process:  # every fold skipped: no Accelerator
        per_fold = [
            {"fold": k, **saved_evaluation(fold.train.output_dir, config.train.load_best_model_at_end)}
            for k, fold in enumerate(configs)
        ]
        results = {
            "folds": args.folds,
            "seed": config.train.seed,
            "rows": {name: {"total": len(ds), "held_out": [len(f) for f in folds[name]]} for name, ds in rows.items()},
            "per_fold": per_fold,
            "summary": summarize(per_fold),
        }
        output.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output / "cv_results.json", results)
        print(f"\n{args.folds}-fold cross-validation (mean ± sample std over folds):")
        print(format_table(per_fold, results["summary"]))
        print(f"Results written to {output / 'cv_results.json'}")
    if accelerator is not None:
        accelerator.end_training()
    return results


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(exit_status_of(main))
