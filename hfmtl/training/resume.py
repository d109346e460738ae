"""The trainer's resume (`MultiTaskTrainer.resume`): what ``train.resume_from_checkpoint`` names, checked
against the resume contract (resume_contract.py) before anything is loaded or written, then loaded; the
evaluations made before the checkpoint, the run id and the best model are brought in line with it.

A run killed after its final model and record were saved resumes only the side jobs of its end
(`ResumePoint.finishing`: hfmtl/training/finishing.py). A finished run trains on only with
``train.resume_extend_max_steps`` and a larger ``max_steps``.

Example:
    >>> point = resume_run(trainer)  # doctest: +SKIP
    >>> point.checkpoint, point.finishing  # doctest: +SKIP
    (PosixPath('outputs/tiny/checkpoints/checkpoint-6'), False)
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..run_record import RunRecord
from .best_model import held_by_best, save_best
from .checkpointing import resolve_resume_path
from .manifest import read_manifest
from .resume_contract import EXTEND, check_finished_run, check_resume
from .sharding import optimizer_state_from
from .zero3 import load_weights

if TYPE_CHECKING:
    from .trainer import MultiTaskTrainer

logger = logging.getLogger("hfmtl")


@dataclass
class ResumePoint:
    """Where a training starts: a checkpoint, the side jobs of a run whose final model is saved, or nothing.

    Attributes:
        checkpoint: the checkpoint the training continues from (None: from the start, or `finishing`).
        finishing: the final model and the run record are saved; only the end's side jobs are left.
        evaluated_step: the checkpoint's step when its evaluation is recorded already (not made again).
    """

    checkpoint: Path | None = None
    finishing: bool = False
    evaluated_step: int | None = None

    @property
    def resumed(self) -> bool:
        return self.checkpoint is not None or self.finishing


def resume_run(trainer: MultiTaskTrainer) -> ResumePoint:
    """Resume what ``train.resume_from_checkpoint`` names, for `trainer`: check the contract, load the
    checkpoint, take over the evaluations made before it and the run id. Writes nothing but ``best/``
    (when a finished run trains on). Sets ``trainer.record``'s history and run id.

    Raises:
        ConfigError: the resume breaks the contract, or would train a finished run again.
    """
    args, output_dir, record = trainer.args, trainer.output_dir, trainer.record
    value = args.resume_from_checkpoint
    earlier = RunRecord.read(output_dir) if value is not None else None
    if value == "latest" and earlier is not None and earlier.trained and earlier.finishing:
        check_finished_run(trainer.config, output_dir)  # the same run, or nothing is touched
        return ResumePoint(finishing=True)
    checkpoint = resolve_resume_path(value, output_dir, earlier.run_id if earlier and value == "latest" else None)
    finished = earlier is not None and earlier.finished
    if checkpoint is None and finished:  # trains on (hfmtl/config/stages.py), but from where?
        raise ConfigError(
            f"{output_dir} holds a finished run without a checkpoint to train on from (train.save_steps was "
            "not set): training on would start over; use another train.output_dir"
        )
    if checkpoint is None:
        record.run_id = _new_run_id()
        return ResumePoint()
    if finished and not (args.resume_extend_max_steps and trainer.total_steps > earlier.train["steps"]):
        raise ConfigError(
            f"{output_dir} holds a finished run: resuming {checkpoint} would train it again; set a larger "
            f"train.max_steps with {EXTEND} to train on, or use another train.output_dir"
        )
    manifest = read_manifest(checkpoint)  # verified by resolve_resume_path
    stamp = {} if manifest is None else {"run_id": manifest.run_id, "extra": manifest.extra}
    if not (stamp.get("extra") or {}).get("config"):
        raise ConfigError(
            f"{checkpoint} does not record the config it was trained with (a checkpoint of an older hfmtl), so "
            "a resume cannot check that it continues the same training; start a new run"
        )
    if earlier is not None and None not in (earlier.run_id, stamp.get("run_id")) and earlier.run_id != stamp["run_id"]:
        raise ConfigError(
            f"{output_dir} holds another run than the one that wrote {checkpoint}: resuming there would mix "
            "the two; resume into the checkpoint's own output_dir, or another one"
        )
    check_resume(checkpoint, stamp["extra"], trainer.config, trainer.accelerator, trainer.total_steps)
    with optimizer_state_from(trainer.accelerator, trainer.model, trainer.optimizer, checkpoint):  # FSDP2's
        trainer.accelerator.load_state(str(checkpoint))
    step = trainer.state.global_step
    record.run_id = stamp.get("run_id") or _new_run_id()
    # evaluations after the checkpoint were made by the run that crashed: they are made again
    record.history = earlier.history_until(step) if earlier is not None else []
    logger.info("Resumed from %s at step %d (run %s)", checkpoint, step, record.run_id)
    evaluated = _offer_recorded_evaluation(trainer, step)
    if finished:
        _restore_best_of_finished_run(trainer, earlier, checkpoint)
    return ResumePoint(checkpoint=checkpoint, evaluated_step=step if evaluated else None)


def _offer_recorded_evaluation(trainer: MultiTaskTrainer, step: int) -> bool:
    """The evaluation at the checkpoint's own step, when the record has it: made before the checkpoint
    (then the checkpoint knows it) or after it (the final evaluation of a last step that is not an
    evaluation step: then it is news to the checkpoint). Offered to the best-model choice again, which
    takes an evaluation it knows as no news; returns whether there was one."""
    entry = trainer.record.evaluation(step)
    if entry is None:
        return False
    results = {k: math.nan if v is None else v for k, v in entry.items() if k.startswith("eval/")}
    args = trainer.args
    is_best = trainer.state.offer_best(results, step, args.metric_for_best_model, trainer.best_is_higher)
    if is_best and args.load_best_model_at_end:  # the weights are the checkpoint's: this step's
        save_best(trainer.accelerator, trainer.model, trainer.output_dir, step, trainer.record.run_id)
    return True


def _restore_best_of_finished_run(trainer: MultiTaskTrainer, earlier: RunRecord, checkpoint: Path) -> None:
    """A finished run that trains on (``resume_extend_max_steps``) removed ``best/`` when it finished;
    its final model holds the best weights: they become ``best/`` again, the checkpoint is loaded after."""
    state, run_id = trainer.state, trainer.record.run_id
    if not trainer.args.load_best_model_at_end or state.best_step is None:
        return
    if held_by_best(trainer.output_dir) == (state.best_step, run_id):
        return
    if earlier.best_step != state.best_step:
        raise ConfigError(
            f"the finished run's best model (step {earlier.best_step}) was evaluated after its last checkpoint "
            f"{checkpoint}: training on from there would lose it; use another train.output_dir"
        )
    load_weights(trainer.accelerator, trainer.unwrapped_model(), trainer.output_dir)  # also under ZeRO-3
    save_best(trainer.accelerator, trainer.model, trainer.output_dir, state.best_step, run_id)
    with optimizer_state_from(trainer.accelerator, trainer.model, trainer.optimizer, checkpoint):
        trainer.accelerator.load_state(str(checkpoint))


def _new_run_id() -> str:
    """A new run id, the main process's on every process (each would draw its own)."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([uuid.uuid4().hex])[0]
