"""``<output_dir>/metrics.json``: the record of a training's evaluations, rewritten after each one.

It holds ``history`` (one entry per evaluation: ``step``, ``epoch`` and every ``eval/<task>/<metric>``
with ``eval/mean``), ``best`` (the step and ``eval/mean`` of the best evaluation), ``main_metrics`` (each
task's main metric), ``greater_is_better`` (the direction of each logged metric whose direction is
known) and, once the final model is saved, ``train`` (what the training used: steps, time, memory,
precision, compilation, processes). A ``train`` entry therefore marks a finished training
(hfmtl/config/stages.py). The model card, the cross-validation summary and ``hfmtl eval`` read it.

Example:
    >>> write_metrics_file(output_dir, tasks, history, best_step=4, best_metric=0.71)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from ..tasks import Task
from .checkpointing import write_json_atomic
from .evaluation import metric_directions
from .setup import compile_backend, peak_memory_mb

METRICS_FILE = "metrics.json"


def write_metrics_file(
    output_dir: str | Path,
    tasks: dict[str, Task],
    history: list[dict[str, Any]],
    best_step: int | None,
    best_metric: float | None,
    train: dict[str, Any] | None = None,
) -> None:
    """Write metrics.json atomically (a reader sees the previous file or this one, never half of one)."""
    data: dict[str, Any] = {
        "history": history,
        "best": {"step": best_step, "eval/mean": best_metric},
        "main_metrics": {name: task.main_metric for name, task in tasks.items()},
        "greater_is_better": metric_directions(
            tasks, list(dict.fromkeys(k for e in history for k in e if k.startswith("eval/")))
        ),
    }
    if train is not None:
        data["train"] = train
    write_json_atomic(Path(output_dir) / METRICS_FILE, data)


def training_summary(
    accelerator: Accelerator, steps: int, runtime_seconds: float, evaluation_seconds: float
) -> dict[str, Any]:
    """metrics.json's ``train`` entry: what the finished training used."""
    return {
        "steps": steps,
        "runtime_seconds": round(runtime_seconds, 1),
        "evaluation_seconds": round(evaluation_seconds, 1),
        "peak_memory_mb": round(peak_memory_mb(accelerator.device)),
        # what the run really used (the config may leave these to the launcher)
        "mixed_precision": accelerator.mixed_precision,
        "torch_compile": compile_backend(accelerator),
        "num_processes": accelerator.num_processes,
    }


def read_history(output_dir: str | Path, up_to_step: int) -> list[dict[str, Any]]:
    """The evaluations a resumed run has already made: those of metrics.json up to `up_to_step` (the
    checkpoint's step; later ones were made after it, by the run that crashed, and are made again)."""
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    history = json.loads(path.read_text()).get("history", [])
    return [entry for entry in history if entry["step"] <= up_to_step]
