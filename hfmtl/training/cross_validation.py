"""K-fold cross-validation over each task's train split: fold assignment, per-fold configs, aggregation.

Fold k of a task holds about 1/K of its train rows; the run of fold k trains every task on its rows
outside fold k and evaluates on fold k (the task's own validation split is not used). Each fold's rows
are written to Parquet files in ``<output>/fold-<k>/data/<task>/{train,validation}.parquet`` and the
fold's config points the task's `data_files` at them, so a fold is an ordinary training run (its resolved
``config.yaml`` reruns it with `hfmtl train`). Parquet rather than JSON Lines because it keeps the
dataset's feature types: a Hub dataset's `ClassLabel` names survive the round trip; JSON would turn them
into bare integers that the task could no longer name.

Example:
    >>> folds = assign_folds(10, 3, seed=0)
    >>> [len(f) for f in folds]
    [4, 3, 3]
    >>> sorted(int(i) for f in folds for i in f) == list(range(10))
    True
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from ..config import RunConfig, config_from_dict
from ..errors import ConfigError
from ..files import atomic_path
from ..run_record import RunRecord
from ..tasks import build_task
from .data import load_raw_splits, setup_task

TRAIN, EVAL = "train", "validation"  # the split names of the materialised fold files


def assign_folds(num_rows: int, num_folds: int, seed: int) -> list[np.ndarray]:
    """Row indices of each fold: a seeded permutation of ``range(num_rows)`` cut into `num_folds` parts.

    The folds are disjoint, cover every row, differ in size by at most one, and each is sorted (a held-out
    fold keeps the dataset's order). The same `seed` gives the same folds on every machine and run.
    """
    if not 2 <= num_folds <= num_rows:
        raise ConfigError(f"--folds {num_folds} must be between 2 and the number of rows ({num_rows})")
    order = np.random.default_rng(seed).permutation(num_rows)
    return [np.sort(part) for part in np.array_split(order, num_folds)]


def check_num_folds(num_folds: int, train_sizes: dict[str, int]) -> None:
    """Refuse K < 2, or a K larger than some task's number of train rows (each fold needs a row)."""
    if num_folds < 2:
        raise ConfigError(f"--folds {num_folds}: cross-validation needs at least 2 folds")
    task_name, size = min(train_sizes.items(), key=lambda item: item[1])
    if num_folds > size:
        raise ConfigError(
            f"--folds {num_folds} is more than task {task_name!r} has train rows ({size}, after "
            f"max_train_samples); use at most {size} folds"
        )


def load_train_rows(config: RunConfig) -> dict[str, datasets.Dataset]:
    """Each task's raw train split, cut to its `max_train_samples` (the cut comes before the folds),
    checked by its task here, so that a bad row is named by the user's file and line, not a fold's."""
    rows = {}
    for task_name, task_config in config.tasks.items():
        task = build_task(task_name, dataclasses.replace(task_config, eval_split=None))  # train only
        raw = load_raw_splits(task, train=True)
        setup_task(task, raw)
        rows[task_name] = raw["train"]
    return rows


def fold_dir(output_dir: str | Path, fold: int) -> Path:
    return Path(output_dir) / f"fold-{fold}"


def fold_data_files(output_dir: str | Path, fold: int, task_name: str) -> dict[str, str]:
    """Where fold `fold` keeps a task's train and held-out rows."""
    base = fold_dir(output_dir, fold) / "data" / task_name
    return {TRAIN: str(base / f"{TRAIN}.parquet"), EVAL: str(base / f"{EVAL}.parquet")}


def write_fold_data(
    rows: dict[str, datasets.Dataset], folds: dict[str, list[np.ndarray]], fold: int, output_dir: str | Path
) -> None:
    """Write every task's rows outside fold `fold` (train) and inside it (validation), all columns kept."""
    for task_name, dataset in rows.items():
        held_out = folds[task_name][fold]
        kept = np.setdiff1d(np.arange(len(dataset)), held_out)
        files = fold_data_files(output_dir, fold, task_name)
        for split, indices in ((TRAIN, kept), (EVAL, held_out)):
            with atomic_path(files[split]) as tmp:  # a crash never leaves a half-written fold behind
                dataset.select(indices.tolist()).to_parquet(str(tmp))


def fold_config(config: RunConfig, fold: int, output_dir: str | Path) -> RunConfig:
    """The run config of fold `fold`: the same training, on the fold's files, in ``<output>/fold-<k>``.

    Every task reads the materialised Parquet files (no Hub id, no sample caps: `max_train_samples` was
    applied before the split, and the whole held-out fold is evaluated, so `max_eval_samples` is ignored).
    Pushing to the Hub is switched off: a fold's model is a measurement, not a release. Each fold keeps
    its final weights (`load_best_model_at_end` off): choosing the best evaluation on the held-out fold
    would make the reported score optimistic.
    """
    data = config.to_dict()
    # the tasks of an input group read one task's files: the same rows (same count, same seed: same folds)
    readers: dict[str, str] = {}
    for task_name, task in data["tasks"].items():
        task.update(
            dataset=None,
            subset=None,
            revision=None,
            data_files=fold_data_files(
                output_dir, fold, readers.setdefault(task["input_group"] or task_name, task_name)
            ),
            train_split=TRAIN,
            eval_split=EVAL,
            max_train_samples=None,
            max_eval_samples=None,
        )
    data["train"].update(
        output_dir=str(fold_dir(output_dir, fold)),
        overwrite_output_dir=True,  # the cross-validation's output directory was checked as a whole
        push_to_hub=False,
        hub_strategy="end",
        # the held-out fold is the test set: picking the best of several evaluations on it would report
        # an optimistic score, so every fold keeps (and reports) its final weights
        load_best_model_at_end=False,
    )
    return config_from_dict(copy.deepcopy(data))


def saved_evaluation(fold_output_dir: str | Path, load_best_model_at_end: bool) -> dict[str, Any]:
    """The evaluation of the model a finished fold saved (its best, or its last), from its run record:
    ``{"step": ..., "eval/<task>/<metric>": ..., "eval/mean": ...}``."""
    record = RunRecord.read(fold_output_dir)
    entry = record.saved_evaluation(load_best_model_at_end) if record is not None else None
    if entry is None:
        raise ConfigError(f"{fold_output_dir}: metrics.json holds no evaluation")
    return {"step": entry["step"], **{k: v for k, v in entry.items() if k.startswith("eval/")}}


def summarize(per_fold: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof=1) over folds of every ``eval/`` key all folds have."""
    keys = [k for k in per_fold[0] if k.startswith("eval/") and all(k in f for f in per_fold)]
    summary = {}
    for key in keys:
        values = np.array([f[key] for f in per_fold], dtype=float)
        std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        summary[key] = {"mean": float(values.mean()), "std": std}
    return summary


def format_table(per_fold: list[dict[str, Any]], summary: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per task and metric, mean ± std, then the value of every fold."""
    header = ["task", "metric", "mean ± std", *(f"fold-{k}" for k in range(len(per_fold)))]
    lines = []
    for key, stats in summary.items():
        parts = key.split("/", 2)  # eval/<task>/<metric>, or eval/mean
        task_name, metric = (parts[1], parts[2]) if len(parts) == 3 else ("(all)", parts[1])
        cells = [f"{stats['mean']:.4f} ± {stats['std']:.4f}", *(f"{f[key]:.4f}" for f in per_fold)]
        lines.append([task_name, metric, *cells])
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *lines])
