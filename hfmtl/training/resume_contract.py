"""The resume contract: a checkpoint continues only the training that wrote it.

Every checkpoint records what its run trained with (`trained_with`, in the ``extra`` of the checkpoint's manifest: manifest.py):
the resolved run config, the number of processes and the precision the run used, its length. A resume
compares that with the config it is given, before it loads or writes anything (`check_resume`):

- a change to anything that alters the trajectory -- the optimizer and its schedule, batch sizes, the
  tasks and their data, sampling, balancing, seed, freezing, PEFT, the model, the number of processes,
  the precision -- is refused in one line that names every changed key. The resumed state would follow
  the old settings in places and the new ones elsewhere, and config.yaml and the card would claim
  settings the weights were never trained with. What is not listed as safe is refused: a config key
  added later is refused on a resume until someone decides it is safe;
- `SAFE_TRAIN_KEYS` -- logging, evaluation and checkpoint frequency, output, trackers, Hub, gradient
  checkpointing -- may change: each change is logged;
- the length (``train.max_steps``, ``num_train_epochs``) changes only on purpose, with
  ``train.resume_extend_max_steps``, and never below the checkpoint's step. The learning-rate schedule
  is then recomputed for the new length.

A finished run is final (`check_finished_run`): running its command again trains nothing and writes
nothing, and a config that differs from the one it was trained with (its config.yaml) is refused the
same way. The resume itself is resume.py's.

Example:
    >>> config_changes({"train": {"seed": 0, "logging_steps": 5}}, {"train": {"seed": 1, "logging_steps": 5}})
    [('train.seed', 0, 1)]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml
from transformers import AutoConfig

from ..config import RunConfig, config_from_dict
from ..errors import ConfigError
from ..model.pooling import resolve_pooling
from ..run_record import RunRecord

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
        # recomputing activations replays the same forward (dropout RNG included): memory, not trajectory
        "gradient_checkpointing",
    }
)
LENGTH_KEYS = ("train.max_steps", "train.num_train_epochs")
EXTEND = "train.resume_extend_max_steps=true"

Change = tuple[str, Any, Any]  # (dotted key, old value, new value); _ABSENT where a key is missing


class _Absent:
    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()


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
    changes = _resolve_auto_pooling(config_changes(_as_read_now(recorded["config"]), _plain(config.to_dict())), config)
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
        hint = f"; to train on to {total_steps} steps on purpose, set {EXTEND}" if length and not extend else ""
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
            EXTEND,
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
    trained = _as_read_now(yaml.safe_load(path.read_text()))
    changes = [c for c in config_changes(trained, _plain(config.to_dict())) if not _is_safe(c[0])]
    changes = _resolve_auto_pooling(changes, config)
    if not changes:
        return
    record = RunRecord.read(output_dir)
    steps = (record.train or {}).get("steps") if record else None
    hint = ""
    if any(c[0] in LENGTH_KEYS for c in changes):
        if not config.train.resume_extend_max_steps:
            hint = f"; to train on with a larger train.max_steps, set {EXTEND}"
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


def _resolve_auto_pooling(changes: list[Change], config: RunConfig) -> list[Change]:
    """`changes` without ``model.pooling`` when one side is 'auto' and 'auto' gives this encoder the other
    side's choice: a run recorded before 'auto' became the default holds 'cls', which 'auto' still is for
    a bidirectional encoder (a decoder's 'cls' -> 'auto' is a real change: it becomes 'last')."""
    change = next((c for c in changes if c[0] == "model.pooling" and "auto" in c[1:]), None)
    if change is None:
        return changes
    other = change[1] if change[2] == "auto" else change[2]
    try:
        encoder_config = AutoConfig.from_pretrained(config.model.name_or_path, revision=config.model.revision)
    except (OSError, ValueError):  # the encoder cannot be read: the change stays, and is refused
        return changes
    if resolve_pooling("auto", encoder_config) != other:
        return changes
    return [c for c in changes if c is not change]


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


def _as_read_now(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config as this hfmtl reads it -- keys added since at their defaults, renamed keys under
    their new names -- so that an upgrade alone is no change; as saved when it no longer loads."""
    try:
        return _plain(config_from_dict(_plain(saved)).to_dict())
    except ConfigError:
        return _plain(saved)


def _plain(data: Any) -> Any:
    """`data` as JSON gives it back (tuples become lists), so a saved config compares equal to a live one."""
    return json.loads(json.dumps(data, default=str))
