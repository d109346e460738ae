"""Staged transfer: one config, several trainings in a row, each from the previous one's result.

A config with ``stages:`` is split here into one ordinary `RunConfig` per stage::

    stages:
      intermediate: {tasks: [mrpc, stsb, sst2], train: {max_steps: 800}}
      target:       {tasks: [rte], train: {max_steps: 400, learning_rate: 3.0e-5}}

Stage k trains only its tasks, with `train:` / `sampling:` overridden by its own keys, writes into
``<output_dir>/<stage name>/`` (model, metrics.json, checkpoints), and starts from stage k-1's saved
model (`model.init_from`): the encoder and the heads of tasks trained before. The first stage starts
from `model.init_from` of the config, if any. Every stage's config is built and validated before the
first one trains, so a typo in the last stage costs nothing.

Example:
    >>> for stage in plan_stages(load_config("configs/rte_transfer.yaml")):  # doctest: +SKIP
    ...     print(stage.name, list(stage.config.tasks), stage.config.train.output_dir)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import run_record
from ..errors import ConfigError
from ..run_record import RunRecord
from .run import RunConfig, config_from_dict


@dataclass
class Stage:
    """One training of a (possibly staged) run.

    Attributes:
        name: the stage's name; None for a config without ``stages:``.
        config: a complete run config for this stage alone (its output_dir is the stage's directory).
        skip: the stage finished in an earlier run that is being resumed.
    """

    name: str | None
    config: RunConfig
    skip: bool = False

    @property
    def output_dir(self) -> Path:
        return Path(self.config.train.output_dir)


def plan_stages(config: RunConfig) -> list[Stage]:
    """The stages to train, in order, each with its own validated config (one stage if none are given).

    Resuming (`train.resume_from_checkpoint`) is resolved here too: finished stages are marked to be
    skipped, the stage that was interrupted resumes, and the ones after it start fresh. A config without
    stages is one stage: with ``latest``, a finished run is skipped (a finished run is final). A finished
    stage trains on instead when ``train.resume_extend_max_steps`` asks for more steps than it trained,
    which only the last stage may (later stages started from it).
    """
    if config.stages is None:
        stage = Stage(None, config)
        if config.train.resume_from_checkpoint == "latest":
            _plan_resume([stage], "latest")
        return [stage]
    base = config.to_dict()
    del base["stages"]
    root = Path(config.train.output_dir)
    stages: list[Stage] = []
    init_from = config.model.init_from
    for index, (name, stage) in enumerate(config.stages.items()):
        data = copy.deepcopy(base)
        data["tasks"] = {task_name: data["tasks"][task_name] for task_name in stage.tasks}
        _drop_lone_input_groups(data["tasks"])
        data["train"].update(copy.deepcopy(stage.train))
        data["train"]["output_dir"] = str(root / name)
        data["train"]["overwrite_output_dir"] = True  # the run's output_dir was checked as a whole
        data["train"]["resume_from_checkpoint"] = None  # set below, per stage
        if index < len(config.stages) - 1:
            data["train"]["push_to_hub"] = False  # one repo, one model: the final stage's
        if stage.sampling:
            data["sampling"].update(copy.deepcopy(stage.sampling))
        elif data["sampling"].get("weights"):
            # the run's weights name tasks of every stage; each stage uses those of its own tasks
            data["sampling"]["weights"] = {k: v for k, v in data["sampling"]["weights"].items() if k in stage.tasks}
        if stage.peft is not None:
            data["peft"] = copy.deepcopy(stage.peft)
        data["model"]["init_from"] = init_from
        if index > 0:
            data["model"]["init_heads"] = "auto"  # a list in `model:` names heads for the first stage
        try:
            stage_config = config_from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"stages.{name}: {err}") from err
        stages.append(Stage(name, stage_config))
        init_from = str(root / name)
    _plan_resume(stages, config.train.resume_from_checkpoint)
    return stages


def stage_is_complete(output_dir: str | Path) -> bool:
    """True when a training finished in `output_dir`: its run record says the run is complete (its
    final model saved and the side jobs of its end done)."""
    record = RunRecord.read(output_dir)
    return record is not None and record.finished


def _trains_on(stage: Stage) -> bool:
    """A finished stage asked to train on: ``resume_extend_max_steps`` and more steps than it trained."""
    train = stage.config.train
    record = RunRecord.read(stage.output_dir)
    return bool(
        train.resume_extend_max_steps and train.max_steps and record and train.max_steps > record.train["steps"]
    )


def _plan_resume(stages: list[Stage], resume: str | None) -> None:
    """Set each stage's resume_from_checkpoint and mark finished stages (``stage.skip``)."""
    if resume is None:
        return
    if resume == "latest":
        for index, stage in enumerate(stages):
            if stage_is_complete(stage.output_dir) and not _trains_on(stage):
                stage.skip = True
                continue
            if stage_is_complete(stage.output_dir) and index < len(stages) - 1:
                raise ConfigError(
                    f"stage {stage.name!r} finished and later stages started from it: it cannot train on "
                    "(train.resume_extend_max_steps); extend the last stage only, or use another train.output_dir"
                )
            stage.config.train.resume_from_checkpoint = "latest"
            return
        return
    path = Path(resume).resolve()
    for index, stage in enumerate(stages):
        if stage.output_dir.resolve() in path.parents:
            unfinished = [s.name for s in stages[:index] if not stage_is_complete(s.output_dir)]
            if unfinished:
                raise ConfigError(
                    f"train.resume_from_checkpoint={resume!r} is in stage {stage.name!r}, but earlier stage(s) "
                    f"{unfinished} did not finish; use resume_from_checkpoint=latest"
                )
            for earlier in stages[:index]:
                earlier.skip = True
            stage.config.train.resume_from_checkpoint = resume
            return
    raise ConfigError(
        f"train.resume_from_checkpoint={resume!r} is not inside any stage's directory "
        f"({', '.join(str(s.output_dir) for s in stages)}); use resume_from_checkpoint=latest"
    )


def write_stages_summary(config: RunConfig, stages: list[Stage]) -> dict[str, Any]:
    """``<output_dir>/metrics.json`` of a staged run: every finished stage's record, by stage name."""
    return run_record.write_stages_summary(config.train.output_dir, {s.name: s.output_dir for s in stages})


def _drop_lone_input_groups(tasks: dict[str, dict[str, Any]]) -> None:
    """A stage that trains one task of an input group trains it alone (hfmtl/config/input_groups.py)."""
    members: dict[str, list[str]] = {}
    for name, task in tasks.items():
        if task.get("input_group") is not None:
            members.setdefault(task["input_group"], []).append(name)
    for names in members.values():
        if len(names) == 1:
            tasks[names[0]]["input_group"] = None
