"""Atomic checkpoints in ``<output_dir>/checkpoints/checkpoint-<step>``, and atomic model saves.

A checkpoint is written by `Accelerator.save_state` (model, optimizer, RNG states of every process, and
every object registered with `register_for_checkpointing`: the LR scheduler, the training state --
sampler, loader positions, best metric -- and a balancing strategy's state) into
``checkpoint-<step>.tmp``, and renamed to its final name only once every process has finished writing.
A crash mid-save leaves a ``.tmp`` directory that `latest_checkpoint` never picks. The best model so far
(``<output_dir>/best``) is saved the same way: written beside, then renamed.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import ConfigError, HfmtlError
from ..files import replace_directory
from .batches import TaskBatches
from .checkpoint_run import checkpoint_run_id, write_checkpoint_run
from .sampling import TaskSampler

logger = logging.getLogger("hfmtl")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path, run_id: str | None = None) -> list[Path]:
    """Complete checkpoints, oldest first; only those of the run `run_id`, when given."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found) if run_id is None or checkpoint_run_id(p) == run_id]


def latest_checkpoint(output_dir: str | Path, run_id: str | None = None) -> Path | None:
    checkpoints = list_checkpoints(output_dir, run_id)
    return checkpoints[-1] if checkpoints else None


def resolve_resume_path(value: str | None, output_dir: str | Path, run_id: str | None = None) -> Path | None:
    """`train.resume_from_checkpoint` -> a checkpoint directory (None: start fresh).

    'latest' means the newest complete checkpoint in output_dir, or a fresh start when there is none
    yet (so one command both starts and resumes a run); with `run_id`, the newest of that run's.
    """
    if value is None:
        return None
    if value == "latest":
        return latest_checkpoint(output_dir, run_id)
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"train.resume_from_checkpoint={value!r} is not a directory (or use 'latest')")
    return path


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    step: int,
    save_total_limit: int | None,
    run_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically and keep only the newest `save_total_limit` (of the run `run_id`, when
    given: another run's checkpoints are never rotated out). `run_id` and `extra` are recorded in the
    checkpoint (checkpoint_run.py). Call on every process."""
    final = checkpoints_dir(output_dir) / f"checkpoint-{step}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover from a crash
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_checkpoint_run(tmp, run_id, extra)
        replace_directory(tmp, final)
        if save_total_limit:
            for old in list_checkpoints(output_dir, run_id)[:-save_total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


class TrainingState:
    """What an exact resume needs beyond model, optimizer, scheduler and RNG (saved by Accelerate): the
    step, the task sampler, each task's position in its data (`TaskBatches`) and the best evaluation."""

    def __init__(self, sampler: TaskSampler, batches: TaskBatches):
        self.global_step = 0
        self.sampler = sampler
        self.batches = batches
        self.best_metric: float | None = None
        self.best_step: int | None = None

    @property
    def positions(self) -> dict[str, dict[str, int]]:
        """task_name -> ``{"epoch": pass over its data, "batches": batches of that pass used}``."""
        return self.batches.positions

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "sampler": self.sampler.state_dict(),
            "positions": self.positions,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
        }

    def offer_best(self, results: dict[str, float], step: int, key: str, greater_is_better: bool) -> bool:
        """Take `step`'s evaluation as the best so far if its `key` beats the best; returns whether it did.
        A NaN or infinite score is never the best (NaN compares false both ways: it would block every
        later step, or be kept forever).

        Raises:
            HfmtlError: `key` (``train.metric_for_best_model``) is not among the evaluation's metrics.
        """
        if key not in results:
            raise HfmtlError(
                f"train.metric_for_best_model={key!r} is not among the evaluation's metrics "
                f"({', '.join(sorted(results))}): name one of them"
            )
        score = results[key]
        if not math.isfinite(score):
            logger.warning("%s is %s at step %d: not a candidate for the best model", key, score, step)
            return False
        best = self.best_metric
        if best is not None and not (score > best if greater_is_better else score < best):
            return False
        self.best_metric, self.best_step = score, step
        return True

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.global_step = int(state["global_step"])
        self.batches.load_positions(state["positions"])
        self.best_metric = state["best_metric"]
        self.best_step = state["best_step"]


def save_model_atomic(accelerator, model, directory: Path) -> None:
    """`save_pretrained` of the prepared `model` into `directory` via a temporary directory and a rename:
    a crash mid-save leaves the previous `directory` whole. Call on every process."""
    state_dict = accelerator.get_state_dict(model)  # collective under some backends: every process
    if accelerator.is_main_process:
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model, keep_torch_compile=False).save_pretrained(tmp, state_dict=state_dict)
        replace_directory(tmp, directory)
    accelerator.wait_for_everyone()
