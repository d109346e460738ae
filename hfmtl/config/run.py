"""Typed configuration of a run: YAML file + dotted ``key=value`` overrides -> validated dataclasses.

A run config has four sections::

    model:     the shared encoder (name or path, pooling, max_length)
    tasks:     one entry per task, keyed by task name; `type` picks the task class from the registry
    sampling:  how the next task is drawn at each optimizer step
    train:     optimizer, schedule, evaluation, checkpointing, output directory

Example:
    >>> cfg = load_config("configs/tiny.yaml", ["train.max_steps=5", "tasks.rte.batch_size=4"])
    >>> cfg.train.max_steps
    5

Every value is checked against its field's type hint (YAML's ``5e-5`` is read as a string by PyYAML;
float fields accept it), and every error names the dotted key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..typed import _suggest, build_dataclass, translate_renamed_keys
from .input_groups import check_input_groups
from .sections import BalancingConfig, ModelConfig, PeftSection, SamplingConfig, StageConfig
from .train import TrainConfig


@dataclass
class RunConfig:
    """A whole run: encoder, tasks, sampling and training."""

    model: ModelConfig
    tasks: dict[str, Any]  # task_name -> a TaskConfig subclass chosen by its `type`
    train: TrainConfig
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig())
    peft: PeftSection | None = None
    balancing: BalancingConfig = field(default_factory=lambda: BalancingConfig())
    stages: dict[str, StageConfig] | None = None  # stage name -> stage, in training order

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks is empty; name at least one task under `tasks:`")
        self.best_model_greater_is_better()  # checks metric_for_best_model's task and direction
        check_input_groups(self.tasks, self.model.max_length)
        if self.peft is not None and self.peft.mode == "per_task" and any(t.input_group for t in self.tasks.values()):
            raise ConfigError(
                "peft.mode=per_task gives each task its own adapter in the encoder, so the tasks of an input group "
                "cannot share an encoder pass: use peft.mode=shared, or drop input_group"
            )
        if self.stages is not None:
            self._check_stages()
            return  # sampling weights and the rest are checked per stage (see hfmtl/config/stages.py)
        unknown = set(self.sampling.weights or {}) - set(self.tasks)
        if unknown:
            raise ConfigError(
                f"sampling.weights names unknown task(s) {sorted(unknown)}; tasks are {sorted(self.tasks)}"
            )
        if self.peft is not None and self.train.freezes_encoder_parts:
            raise ConfigError("peft already freezes the encoder's weights: drop train.freeze_* (or peft)")
        self._check_streaming()

    def _check_streaming(self) -> None:
        """A streaming task's size is unknown until its stream is read (hfmtl/training/streaming.py): what
        needs every task's size needs it declared, before anything is loaded."""
        streams = [name for name, task in self.tasks.items() if task.streaming]
        if streams and self.train.dataloader_num_workers:
            raise ConfigError(
                f"task {streams[0]!r} is streamed in the training process, whose stream position is checkpointed: "
                "set train.dataloader_num_workers=0 (or streaming: false)"
            )
        unsized = [name for name in streams if self.tasks[name].num_train_examples is None]
        if not unsized:
            return
        key = f"tasks.{unsized[0]}.num_train_examples"
        if self.sampling.strategy in ("proportional", "temperature"):
            raise ConfigError(
                f"sampling.strategy={self.sampling.strategy!r} needs every task's size and streaming task "
                f"{unsized[0]!r} has none: set {key}, or sampling.strategy to weights, uniform or round_robin"
            )
        if self.train.max_steps is None:
            raise ConfigError(
                f"train.num_train_epochs needs every task's size and streaming task {unsized[0]!r} has none: "
                f"set train.max_steps, or {key}"
            )

    def _check_stages(self) -> None:
        if not self.stages:
            raise ConfigError("stages is empty; name at least one stage or drop `stages:`")
        for name, stage in self.stages.items():
            if not stage.tasks:
                raise ConfigError(f"stages.{name}.tasks is empty; name the tasks this stage trains")
            for task_name in stage.tasks:
                if task_name not in self.tasks:
                    raise ConfigError(
                        f"stages.{name}.tasks names unknown task {task_name!r}"
                        f"{_suggest(task_name, self.tasks)}; tasks are {sorted(self.tasks)}"
                    )
            # one Accelerator state serves every stage: precision and compilation are the run's
            whole_run = (
                "output_dir",
                "resume_from_checkpoint",
                "resume_extend_max_steps",
                "overwrite_output_dir",
                "mixed_precision",
                "torch_compile",
                "torch_compile_backend",
                "torch_compile_mode",
            )
            for key in (*whole_run, "push_to_hub", "hub_model_id"):
                if key in stage.train:
                    raise ConfigError(f"stages.{name}.train.{key} is set for the whole run: move it to `train:`")

    def best_model_greater_is_better(self) -> bool:
        """Whether a higher ``train.metric_for_best_model`` is better: ``train.greater_is_better`` when
        set; else true for ``eval/mean``; else, for a task's metric, the task's ``greater_is_better``
        (which speaks for its main metric) or the direction `hfmtl.tasks.metrics` knows.

        Raises:
            ConfigError: the metric names an unknown task, or its direction is neither known nor set.
        """
        train = self.train
        if train.metric_for_best_model == "eval/mean":
            return True if train.greater_is_better is None else train.greater_is_better
        _, task_name, metric = train.metric_for_best_model.split("/", 2)
        if task_name not in self.tasks:
            raise ConfigError(
                f"train.metric_for_best_model={train.metric_for_best_model!r} names unknown task {task_name!r}"
                f"{_suggest(task_name, self.tasks)}; tasks are {sorted(self.tasks)}"
            )
        if train.greater_is_better is not None:
            return train.greater_is_better
        from ..tasks.metrics import greater_is_better, metric_key  # tasks import torch: late, as in config_from_dict

        task = self.tasks[task_name]
        configured = [metric_key(name) for name in task.metrics or []]
        main_metric = task.main_metric or (configured[0] if configured else None)
        known = task.greater_is_better if metric == main_metric else None
        if known is None:
            known = greater_is_better(metric)
        if known is None:
            raise ConfigError(
                f"train.metric_for_best_model={train.metric_for_best_model!r}: hfmtl does not know whether a "
                f"higher {metric!r} is better; set train.greater_is_better: true (or false)"
            )
        return known

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that `config_from_dict` turns back into an equal RunConfig."""
        return dataclasses.asdict(self)


_SECTIONS = ("model", "tasks", "train", "sampling", "peft", "balancing", "stages")


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from a plain nested dict (e.g. parsed YAML)."""
    from ..tasks import task_config_from_dict  # tasks import config; import late to avoid a cycle

    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping with the sections model, tasks, train (and sampling)")
    sections = set(_SECTIONS)
    for key in data:
        if key not in sections:
            hint = _suggest(str(key), sections) or f"; the sections are {', '.join(_SECTIONS)}"
            raise ConfigError(f"unknown section {key!r}{hint}")
    for key in ("model", "tasks", "train"):
        if key not in data:
            raise ConfigError(f"the config has no `{key}:` section")
    tasks_data = data["tasks"]
    if not isinstance(tasks_data, dict):
        raise ConfigError("tasks must be a mapping: task_name -> {type: ..., ...}")
    tasks = {str(name): task_config_from_dict(str(name), spec) for name, spec in tasks_data.items()}
    return RunConfig(
        model=build_dataclass(ModelConfig, data["model"], "model"),
        tasks=tasks,
        train=build_dataclass(TrainConfig, data["train"], "train"),
        sampling=build_dataclass(SamplingConfig, data.get("sampling"), "sampling"),
        peft=None if data.get("peft") is None else build_dataclass(PeftSection, data["peft"], "peft"),
        balancing=build_dataclass(BalancingConfig, data.get("balancing"), "balancing"),
        stages=_build_stages(data.get("stages")),
    )


def _build_stages(data: Any) -> dict[str, StageConfig] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError("stages must be a mapping: stage_name -> {tasks: [...], train: {...}}, in training order")
    stages = {str(name): build_dataclass(StageConfig, spec, f"stages.{name}") for name, spec in data.items()}
    for name, stage in stages.items():
        # a stage's keys are merged into `train:` / `sampling:` (hfmtl/config/stages.py), which use new names
        stage.train = translate_renamed_keys(TrainConfig, stage.train, f"stages.{name}.train")
        stage.sampling = translate_renamed_keys(SamplingConfig, stage.sampling, f"stages.{name}.sampling")
    return stages


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a nested dict; values are parsed as YAML scalars/lists.

    Example:
        >>> apply_overrides({"train": {"max_steps": 10}}, ["train.max_steps=20"])
        {'train': {'max_steps': 20}}
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.max_steps=100)")
        value = yaml.safe_load(raw) if raw != "" else None
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a YAML config, apply ``key=value`` overrides and validate it.

    Raises:
        ConfigError: the file is missing or unreadable, or a key/value is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}".replace("\n", " ")) from err
    return config_from_dict(apply_overrides(data, overrides))


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML; `load_config` on it gives back an equal RunConfig."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
