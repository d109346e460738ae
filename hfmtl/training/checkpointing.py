"""Atomic, verified checkpoints in ``<output_dir>/checkpoints/checkpoint-<step>``, and atomic model saves.

A checkpoint is written by `Accelerator.save_state` (model, optimizer, RNG states of every process, and
every object registered with `register_for_checkpointing`: the LR scheduler, the training state --
sampler, loader positions, best metric -- and a balancing strategy's state) into
``checkpoint-<step>.tmp``. Once every process has finished writing, the main process adds its manifest
(the size and sha256 of every file, manifest.py), flushes every file and directory to disk, and renames
it to its final name. A crash mid-save leaves a ``.tmp`` directory that `list_checkpoints` never lists.

A resume (`resolve_resume_path`) checks the checkpoint against its manifest before Accelerate loads it:
``latest`` falls back, with a warning, past a checkpoint that is damaged to the newest that is whole; an
explicit path to a damaged one is a one-line error. The best model so far (``<output_dir>/best``) is
saved the same way: written beside, flushed, then renamed.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import ConfigError, HfmtlError
from ..files import TMP_SUFFIX, replace_directory
from .batches import TaskBatches
from .manifest import (
    CheckpointManifest,
    InvalidCheckpoint,
    read_manifest,
    verify_checkpoint,
    verify_files,
    write_manifest,
)
from .sampling import TaskSampler

logger = logging.getLogger("hfmtl")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_step(checkpoint: Path) -> int:
    """The step in a ``checkpoint-<step>`` directory's name."""
    match = _CHECKPOINT.match(Path(checkpoint).name)
    if match is None:
        raise ValueError(f"{checkpoint} is not named checkpoint-<step>")
    return int(match.group(1))


def list_checkpoints(output_dir: str | Path, run_id: str | None = None) -> list[Path]:
    """Checkpoints that were renamed to their final name (their writing finished), oldest first; with a
    `run_id`, only those whose manifest carries it (one without a readable manifest is no run's)."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found) if run_id is None or checkpoint_run_id(p) == run_id]


def checkpoint_run_id(checkpoint: Path) -> str | None:
    """The id of the run that wrote `checkpoint`, from its manifest (None: none, or unreadable)."""
    try:
        manifest = read_manifest(checkpoint)
    except InvalidCheckpoint:
        return None
    return None if manifest is None else manifest.run_id


def latest_checkpoint(output_dir: str | Path, run_id: str | None = None) -> Path | None:
    """The newest of `list_checkpoints`, unverified (`resolve_resume_path` verifies)."""
    checkpoints = list_checkpoints(output_dir, run_id)
    return checkpoints[-1] if checkpoints else None


def resolve_resume_path(value: str | None, output_dir: str | Path, run_id: str | None = None) -> Path | None:
    """`train.resume_from_checkpoint` -> a verified checkpoint directory (None: start fresh).

    'latest' means the newest checkpoint in output_dir that is whole -- every file its manifest lists is
    there with its size and sha256 -- or a fresh start when there is none yet (so one command both starts
    and resumes a run). A damaged checkpoint is passed over with a warning that names it and the file at
    fault. With a `run_id`, only checkpoints whose manifest carries it are candidates; without one, a
    checkpoint of an older hfmtl (no manifest) is taken with a warning. An explicit path is the user's
    choice: it is verified, but not filtered by run id.

    Raises:
        ConfigError: an explicit path that is not a directory.
        InvalidCheckpoint: an explicit path to a damaged checkpoint, or 'latest' when checkpoints exist
            but none is whole; the one line names the checkpoint and the file.
    """
    if value is None:
        return None
    if value == "latest":
        return _latest_whole_checkpoint(output_dir, run_id)
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"train.resume_from_checkpoint={value!r} is not a directory (or use 'latest')")
    try:
        manifest = verify_checkpoint(path)
    except InvalidCheckpoint as err:
        fix = "resume from another checkpoint, or with 'latest' (the newest whole one)"
        raise InvalidCheckpoint(f"train.resume_from_checkpoint: {err}; {fix}", err.checkpoint, err.file) from err
    _log_verified(path, manifest)
    return path


def _latest_whole_checkpoint(output_dir: str | Path, run_id: str | None) -> Path | None:
    damaged: list[InvalidCheckpoint] = []
    for checkpoint in reversed(list_checkpoints(output_dir)):
        try:
            manifest = read_manifest(checkpoint)
            if run_id is not None and (manifest is None or manifest.run_id != run_id):
                written_by = "an older hfmtl (no manifest)" if manifest is None else f"run {manifest.run_id!r}"
                logger.warning("Not resuming %s: it was written by %s, not by run %r", checkpoint, written_by, run_id)
                continue
            if manifest is None:
                verify_checkpoint(checkpoint)  # what can be checked without a manifest: the RNG state
            else:
                verify_files(checkpoint, manifest)
            _log_verified(checkpoint, manifest)
            return checkpoint
        except InvalidCheckpoint as err:
            logger.warning("%s; falling back to the checkpoint before it", err)
            damaged.append(err)
    if damaged:
        newest = damaged[0]
        more = f" (and {len(damaged) - 1} older one(s))" if len(damaged) > 1 else ""
        raise InvalidCheckpoint(
            f"train.resume_from_checkpoint='latest': no whole checkpoint is left in "
            f"{checkpoints_dir(output_dir)}: {newest}{more}; remove the damaged checkpoints to start afresh",
            newest.checkpoint,
            newest.file,
        )
    return None


def _log_verified(checkpoint: Path, manifest: CheckpointManifest | None) -> None:
    if manifest is None:
        logger.warning(
            "%s has no manifest.json (it was written by an older hfmtl): its files cannot be checked before the resume",
            checkpoint,
        )
    else:
        logger.info("Verified %s: its %d files match their sizes and sha256", checkpoint, len(manifest.files))


def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    step: int,
    save_total_limit: int | None,
    *,
    run_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically, with its manifest, and keep only the newest `save_total_limit`.
    Call on every process. What crashed saves and removals left (``*.tmp`` beside the checkpoints) goes
    once this checkpoint is in place.

    Args:
        accelerator: the run's Accelerator (its `save_state` writes the checkpoint).
        output_dir: the run's output directory.
        step: the optimizer step just finished.
        save_total_limit: how many checkpoints of the run up to `step` to keep (None or 0: all). Checkpoints at
            later steps than `step` (left by a run that went further, e.g. one resumed from an earlier
            checkpoint) neither count nor are removed, so a rotation never removes the checkpoint just
            written nor the one this run resumed from in favour of them.
        run_id: the run's id, recorded in the manifest (a resume with 'latest' of that run takes only
            checkpoints that carry it).
        extra: JSON-able metadata recorded in the manifest (`read_manifest(...).extra`).

    Returns:
        The checkpoint's directory.
    """
    final = checkpoints_dir(output_dir) / f"checkpoint-{step}"
    tmp = final.with_name(final.name + TMP_SUFFIX)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover from a crash
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_manifest(tmp, step=step, run_id=run_id, num_processes=accelerator.num_processes, extra=extra)
        replace_directory(tmp, final)  # flushes every file and directory of tmp to disk, then renames
        for leftover in final.parent.glob("*" + TMP_SUFFIX):  # of saves and removals a crash cut short
            shutil.rmtree(leftover, ignore_errors=True)
        if save_total_limit:
            # only this run's: another run's checkpoints in the directory are never rotated out
            up_to_now = [p for p in list_checkpoints(output_dir, run_id) if checkpoint_step(p) <= step]
            for old in up_to_now[:-save_total_limit]:
                _remove_checkpoint(old)
    accelerator.wait_for_everyone()
    return final


def _remove_checkpoint(checkpoint: Path) -> None:
    # Renamed out of the checkpoint names first: a crash in the middle of the removal must not leave a
    # half-removed checkpoint-<step> (perhaps without its manifest, so unverifiable) for a resume to take.
    doomed = checkpoint.with_name(checkpoint.name + ".old" + TMP_SUFFIX)
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(checkpoint, doomed)
    shutil.rmtree(doomed)


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
    def positions(self) -> dict[str, dict[str, Any]]:
        """task_name -> ``{"epoch": pass over its data, "batches": batches of that pass used}`` (and for a
        streaming task ``"stream"``: where its stream stands, batches.py)."""
        return self.batches.positions

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds (`Accelerator.save_state` calls this on every process)."""
        return {
            "global_step": self.global_step,
            "sampler": self.sampler.state_dict(),
            "positions": self.batches.saved_positions(),
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
