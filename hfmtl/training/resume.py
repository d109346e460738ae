"""The resume contract: a checkpoint continues only the training that wrote it.

Every checkpoint records what its run trained with (`trained_with`, in the checkpoint: checkpoint_run.py):
the resolved run config, the number of processes and the precision the run used, its length. A resume
compares that with the config it is given, before it loads or writes anything:

- a change to anything that alters the trajectory -- the optimizer and its schedule, batch sizes, the
  tasks and their data, sampling, balancing, seed, freezing, PEFT, the model, the number of processes,
  the precision -- is refused in one line that names every changed key. The resumed state would follow
  the old settings in places and the new ones elsewhere, and config.yaml and the card would claim
  settings the weights were never trained with;
- `SAFE_TRAIN_KEYS` -- logging, evaluation and checkpoint frequency, output, trackers, Hub -- may
  change: each change is logged;
- the length (``train.max_steps``, ``num_train_epochs``) changes only on purpose, with
  ``train.resume_extend_max_steps``, and never below the checkpoint's step. The learning-rate schedule
  is then recomputed for the new length.

A finished run is final (`check_finished_run`): running its command again trains nothing and writes
nothing, and a config that differs from the one it was trained with is refused the same way.

`resume_run` is the trainer's resume (`MultiTaskTrainer.resume`): the contract, then the checkpoint
loaded, the evaluations before it and the best model brought in line with it.

Example:
    >>> config_changes({"train": {"seed": 0, "logging_steps": 5}}, {"train": {"seed": 1, "logging_steps": 5}})
    [('train.seed', 0, 1)]
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..config import RunConfig
from ..errors import ConfigError
from ..run_record import RunRecord
from .best_model import held_by_best, save_best
from .checkpoint_run import read_checkpoint_run
from .checkpointing import resolve_resume_path

if TYPE_CHECKING:
    from .trainer import MultiTaskTrainer

logger = logging.getLogger("hfmtl")

# what may change on a resume: where and how often the run reports and saves, never what it computes
SAFE_TRAIN_KEYS = frozenset(
    {
        "output_dir",
        "overwrite_output_dir",
        "resume_from_checkpoint",
        "resume_extend_max_steps",
        "logging_steps",
        "eval_steps",
        "save_steps",
        "save_total_limit",
        "report_to",
        "push_to_hub",
        "hub_model_id",
        "hub_private_repo",
        "hub_strategy",
    }
)
LENGTH_KEYS = ("train.max_steps", "train.num_train_epochs")
_EXTEND = "train.resume_extend_max_steps=true"

Change = tuple[str, Any, Any]  # (dotted key, old value, new value); _ABSENT where a key is missing


class _Absent:
    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()


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


def trained_with(config: RunConfig, accelerator, total_steps: int, step: int) -> dict[str, Any]:
    """What a checkpoint at `step` records of its training (see the module docstring)."""
    return {
        "config": _plain(config.to_dict()),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "total_steps": total_steps,
        "step": step,
    }


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[Change]:
    """Every leaf that differs between two nested config dicts, as (dotted key, old, new), sorted."""
    changes: list[Change] = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        before, after = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if isinstance(before, dict) and isinstance(after, dict):
            changes += config_changes(before, after, f"{name}.")
        elif before != after:
            changes.append((name, before, after))
    return changes


def check_resume(checkpoint: Path, recorded: dict[str, Any], config: RunConfig, accelerator, total_steps: int) -> None:
    """Accept a resume from `checkpoint` (which `recorded`, `trained_with`) with `config`, or refuse it.

    Raises:
        ConfigError: something that alters the trajectory changed, or the length changed without
            ``resume_extend_max_steps`` or below the checkpoint's step.
    """
    changes = config_changes(recorded["config"], _plain(config.to_dict()))
    # the precision the run used, which the launcher may have set, is compared instead of the config key
    changes = [c for c in changes if c[0] not in ("stages", "train.mixed_precision")]
    for key, label in (("num_processes", "number of processes"), ("mixed_precision", "mixed precision used")):
        now = accelerator.num_processes if key == "num_processes" else accelerator.mixed_precision
        if recorded[key] != now:
            changes.append((label, recorded[key], now))
    step, old_total = recorded["step"], recorded["total_steps"]
    safe = [c for c in changes if _is_safe(c[0])]
    length = [c for c in changes if c[0] in LENGTH_KEYS]
    refused = [c for c in changes if c not in safe and c not in length]
    extend = config.train.resume_extend_max_steps
    if length and extend and total_steps < step:
        raise ConfigError(
            f"{_length(config)} ({total_steps} steps) is shorter than {checkpoint}'s step {step}: "
            f"a resume cannot train less than was trained; use a length of at least {step} steps"
        )
    if length and not extend:
        refused += length
    if refused:
        hint = f"; to train on to {total_steps} steps on purpose, set {_EXTEND}" if length and not extend else ""
        raise ConfigError(
            f"resuming from {checkpoint} with a changed training: {_describe(refused)}; these change what "
            "the checkpoint's run trained: restore them, or start a new run (another train.output_dir, or "
            f"train.overwrite_output_dir=true without resume_from_checkpoint){hint}"
        )
    if safe:
        logger.info(
            "resuming from %s with changed settings that do not alter the training: %s", checkpoint, _describe(safe)
        )
    if total_steps != old_total:
        logger.warning(
            "the training's length changes from %d to %d steps (%s): the learning-rate schedule after step %d is "
            "recomputed for %d steps",
            old_total,
            total_steps,
            _EXTEND,
            step,
            total_steps,
        )


def check_finished_run(config: RunConfig, output_dir: Path) -> None:
    """A finished run's command, run again: accepted (nothing to do) when its config is the one the run
    was trained with, up to `SAFE_TRAIN_KEYS`.

    Raises:
        ConfigError: the config differs (a longer max_steps names ``resume_extend_max_steps``).
    """
    path = output_dir / "config.yaml"
    if not path.is_file():
        return
    trained = _plain(yaml.safe_load(path.read_text()))
    changes = [c for c in config_changes(trained, _plain(config.to_dict())) if not _is_safe(c[0])]
    if not changes:
        return
    record = RunRecord.read(output_dir)
    steps = (record.train or {}).get("steps") if record else None
    hint = ""
    if any(c[0] in LENGTH_KEYS for c in changes):
        if not config.train.resume_extend_max_steps:
            hint = f"; to train on with a larger train.max_steps, set {_EXTEND}"
        elif (config.train.max_steps or 0) < (steps or 0):
            raise ConfigError(
                f"{output_dir} holds a finished run of {steps} steps: {_length(config)} is shorter; a finished "
                "run cannot be cut (use another train.output_dir)"
            )
        elif record is not None and record.finishing:
            hint = "; its end was interrupted: run its command once as it was, to finish it, then train on"
    raise ConfigError(
        f"{output_dir} holds a finished run trained with other settings: {_describe(changes)}; nothing was "
        f"trained: restore them, or use another train.output_dir (or train.overwrite_output_dir=true without "
        f"resume_from_checkpoint to replace the run){hint}"
    )


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
    if checkpoint is None:
        record.run_id = _new_run_id()
        return ResumePoint()
    finished_steps = earlier.train["steps"] if earlier is not None and earlier.finished else None
    if finished_steps is not None and not (args.resume_extend_max_steps and trainer.total_steps > finished_steps):
        raise ConfigError(
            f"{output_dir} holds a finished run: resuming {checkpoint} would train it again; set a larger "
            f"train.max_steps with {_EXTEND} to train on, or use another train.output_dir"
        )
    stamp = read_checkpoint_run(checkpoint) or {}
    if not (stamp.get("extra") or {}).get("config"):
        raise ConfigError(
            f"{checkpoint} does not record the config it was trained with (a checkpoint of an older hfmtl), so "
            "a resume cannot check that it continues the same training; start a new run"
        )
    check_resume(checkpoint, stamp["extra"], trainer.config, trainer.accelerator, trainer.total_steps)
    trainer.accelerator.load_state(str(checkpoint))
    step = trainer.state.global_step
    record.run_id = stamp.get("run_id") or _new_run_id()
    # evaluations after the checkpoint were made by the run that crashed: they are made again
    same_run = earlier is not None and earlier.run_id in (None, record.run_id)
    record.history = earlier.history_until(step) if same_run else []
    logger.info("Resumed from %s at step %d (run %s)", checkpoint, step, record.run_id)
    evaluated = _offer_recorded_evaluation(trainer, step)
    if earlier is not None and earlier.finished:
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
    trainer.unwrapped_model().load_weights(trainer.output_dir)
    save_best(trainer.accelerator, trainer.model, trainer.output_dir, state.best_step, run_id)
    trainer.accelerator.load_state(str(checkpoint))


def _new_run_id() -> str:
    """A new run id, the main process's on every process (each would draw its own)."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([uuid.uuid4().hex])[0]


def _is_safe(key: str) -> bool:
    section, _, name = key.partition(".")
    return section == "train" and name in SAFE_TRAIN_KEYS


def _length(config: RunConfig) -> str:
    train = config.train
    return (
        f"train.max_steps={train.max_steps}" if train.max_steps else f"train.num_train_epochs={train.num_train_epochs}"
    )


def _describe(changes: list[Change]) -> str:
    return ", ".join(f"{key} ({_short(old)} -> {_short(new)})" for key, old, new in changes)


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, (str, _Absent)) else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _plain(data: Any) -> Any:
    """`data` as JSON gives it back (tuples become lists), so a saved config compares equal to a live one."""
    return json.loads(json.dumps(data, default=str))
