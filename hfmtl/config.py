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
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError

POOLING_CHOICES = ("cls", "mean")
MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
SCHEDULER_CHOICES = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial")
SAMPLING_CHOICES = ("proportional", "temperature", "uniform", "round_robin", "weights")


def check_choice(key: str, value: Any, allowed: typing.Iterable[Any]) -> None:
    """Raise a ConfigError naming `key` when `value` is not one of `allowed`."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")


def check_positive(key: str, value: float | None, allow_zero: bool = False) -> None:
    """Raise a ConfigError naming `key` when `value` is set and not > 0 (or >= 0 with `allow_zero`)."""
    if value is None:
        return
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value!r} must be {bound}")


@dataclass
class ModelConfig:
    """The shared encoder."""

    name_or_path: str = field(metadata={"help": "Hub id or local directory of any AutoModel encoder."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use; defaults to name_or_path."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the encoder."})
    pooling: str = field(default="cls", metadata={"help": "Sentence representation: 'cls' or 'mean'."})
    classifier_dropout: float | None = field(
        default=None, metadata={"help": "Dropout in the heads; defaults to the encoder's hidden dropout."}
    )
    max_length: int = field(default=128, metadata={"help": "Default max tokens per input; tasks may override."})

    def __post_init__(self) -> None:
        check_choice("model.pooling", self.pooling, POOLING_CHOICES)
        check_positive("model.max_length", self.max_length)
        if self.classifier_dropout is not None and not 0 <= self.classifier_dropout < 1:
            raise ConfigError(f"model.classifier_dropout={self.classifier_dropout!r} must be in [0, 1)")


@dataclass
class SamplingConfig:
    """How the task of each optimizer step is drawn (see `hfmtl.sampling`)."""

    strategy: str = field(
        default="proportional",
        metadata={"help": "proportional | temperature | uniform | round_robin | weights"},
    )
    temperature: float = field(
        default=2.0, metadata={"help": "T for 'temperature': p_t ∝ min(n_t, max_examples)^(1/T)."}
    )
    max_examples: int | None = field(
        default=None,
        metadata={"help": "Cap K on a task's size before sampling (T5's examples-proportional)."},
    )
    weights: dict[str, float] | None = field(
        default=None, metadata={"help": "Per-task weights for 'weights' (normalised to probabilities)."}
    )

    def __post_init__(self) -> None:
        check_choice("sampling.strategy", self.strategy, SAMPLING_CHOICES)
        check_positive("sampling.temperature", self.temperature)
        check_positive("sampling.max_examples", self.max_examples)
        if self.strategy == "weights" and not self.weights:
            raise ConfigError("sampling.strategy='weights' needs sampling.weights: {task_name: weight, ...}")
        for name, weight in (self.weights or {}).items():
            check_positive(f"sampling.weights.{name}", weight, allow_zero=True)


@dataclass
class TrainConfig:
    """Optimisation, evaluation, checkpointing and output. Names follow transformers' TrainingArguments."""

    output_dir: str = field(metadata={"help": "Where the model, metrics, config, log and checkpoints go."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into a non-empty output_dir (never when resuming)."}
    )
    seed: int = 42
    max_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps in total; overrides num_train_epochs."}
    )
    num_train_epochs: float = field(
        default=1.0,
        metadata={"help": "One epoch = as many steps as all tasks' train batches together (see sampling.py)."},
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Default per-task batch size."})
    per_device_eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Clip the gradient norm; null: off."})
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int = field(default=0, metadata={"help": "Overrides warmup_ratio when > 0."})
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16 (through Accelerate)."})
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate every N steps (and always at the end)."})
    save_steps: int | None = field(default=None, metadata={"help": "Checkpoint every N steps; null: never."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep the last K checkpoints."})
    logging_steps: int = 50
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint directory, or 'latest' in output_dir."}
    )
    group_by_length: bool = field(
        default=False, metadata={"help": "Batch examples of similar length together to cut padding."}
    )
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Save the weights of the best evaluation (by mean main metric)."}
    )
    report_to: list[str] = field(default_factory=list, metadata={"help": "Accelerate trackers, e.g. [tensorboard]."})
    dataloader_num_workers: int = 0

    def __post_init__(self) -> None:
        check_choice("train.mixed_precision", self.mixed_precision, MIXED_PRECISION_CHOICES)
        check_choice("train.lr_scheduler_type", self.lr_scheduler_type, SCHEDULER_CHOICES)
        for name in (
            "max_steps",
            "num_train_epochs",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "learning_rate",
            "eval_steps",
            "save_steps",
            "save_total_limit",
            "logging_steps",
        ):
            check_positive(f"train.{name}", getattr(self, name))
        for name in ("seed", "weight_decay", "warmup_steps", "dataloader_num_workers"):
            check_positive(f"train.{name}", getattr(self, name), allow_zero=True)
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio={self.warmup_ratio!r} must be in [0, 1)")


@dataclass
class RunConfig:
    """A whole run: encoder, tasks, sampling and training."""

    model: ModelConfig
    tasks: dict[str, Any]  # task_name -> a TaskConfig subclass chosen by its `type`
    train: TrainConfig
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig())

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks is empty; name at least one task under `tasks:`")
        unknown = set(self.sampling.weights or {}) - set(self.tasks)
        if unknown:
            raise ConfigError(
                f"sampling.weights names unknown task(s) {sorted(unknown)}; tasks are {sorted(self.tasks)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that `config_from_dict` turns back into an equal RunConfig."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with type checks and helpful errors.


def _suggest(name: str, candidates: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the type hint `hint`, converting where YAML is loose (e.g. '5e-5')."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        check_choice(key, value, args)
        return value
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]  # `report_to: tensorboard` means [tensorboard]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        return [_coerce(f"{key}[{i}]", v, args[0] if args else Any) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        value_hint = args[1] if args else Any
        return {str(k): _coerce(f"{key}.{k}", v, value_hint) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}={value!r} must be an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} must be a number")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r} must be a string")
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, key)
    return value


def build_dataclass(cls: type, data: Any, prefix: str) -> Any:
    """Instantiate dataclass `cls` from the mapping `data`, checking names and types.

    Args:
        cls: the dataclass to build.
        data: its fields as a mapping (from YAML).
        prefix: the dotted key of this section, used in error messages.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown key {prefix}.{key}{_suggest(str(key), fields)}")
        kwargs[key] = _coerce(f"{prefix}.{key}", value, hints[key])
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigError(f"{prefix}.{missing[0]} is required")
    try:
        return cls(**kwargs)
    except TypeError as err:  # a dataclass-level mismatch we did not anticipate: still one line
        raise ConfigError(f"{prefix}: {err}") from err


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from a plain nested dict (e.g. parsed YAML)."""
    from .tasks import task_config_from_dict  # tasks import config; import late to avoid a cycle

    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping with the sections model, tasks, train (and sampling)")
    sections = {"model", "tasks", "train", "sampling"}
    for key in data:
        if key not in sections:
            raise ConfigError(f"unknown section {key!r}{_suggest(str(key), sections)}")
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
    )


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
