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

from .errors import ConfigError
from .typed_config import _suggest, build_dataclass, check_choice, check_positive

POOLING_CHOICES = ("cls", "mean")
MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
# torch.compile's modes (https://pytorch.org/docs/stable/generated/torch.compile.html)
COMPILE_MODE_CHOICES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SCHEDULER_CHOICES = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial")
# AdamW implementations, named as transformers' TrainingArguments.optim names them
OPTIM_CHOICES = ("adamw_torch_fused", "adamw_torch")
SAMPLING_CHOICES = ("proportional", "temperature", "uniform", "round_robin", "weights")


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
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "Start from this checkpoint: an hfmtl model directory or any HF model (Hub id or path). "
            "Its encoder weights replace name_or_path's; heads of tasks with the same name and shape are kept."
        },
    )
    init_heads: str | list[str] = field(
        default="auto",
        metadata={
            "help": "With init_from: 'auto' keeps every matching head, 'none' keeps none, a list of task "
            "names keeps exactly those (an error if one cannot be kept)."
        },
    )

    def __post_init__(self) -> None:
        check_choice("model.pooling", self.pooling, POOLING_CHOICES)
        if isinstance(self.init_heads, str):
            check_choice("model.init_heads", self.init_heads, ("auto", "none"))
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
    optim: str = field(
        default="adamw_torch_fused",
        metadata={
            "help": "AdamW kernel: adamw_torch_fused (one fused kernel; the Trainer's default in transformers 5; "
            "on 2 CPU cores a MiniLM step's optimizer time fell from 76 to 14 ms) or adamw_torch (a loop over "
            "the parameters)."
        },
    )
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Clip the gradient norm; null: off."})
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int = field(default=0, metadata={"help": "Overrides warmup_ratio when > 0."})
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "help": "no | fp16 | bf16 (through Accelerate). Unset: what `accelerate launch --mixed_precision` "
            "or `accelerate config` says (else no). fp16 needs a GPU."
        },
    )
    torch_compile: bool | None = field(
        default=None,
        metadata={
            "help": "Compile the model with torch.compile (Accelerate's dynamo plugin). Unset: what "
            "`accelerate launch --dynamo_backend` says (else no); setting torch_compile_backend implies true."
        },
    )
    torch_compile_backend: str | None = field(
        default=None, metadata={"help": "torch.compile backend (default inductor), e.g. aot_eager, cudagraphs."}
    )
    torch_compile_mode: str | None = field(
        default=None, metadata={"help": "torch.compile mode: default | reduce-overhead | max-autotune | ..."}
    )
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
    # Freezing and learning-rate schedules of the encoder (see hfmtl/freezing.py).
    freeze_embeddings: bool = field(default=False, metadata={"help": "Do not train the embeddings."})
    freeze_layers: int = field(default=0, metadata={"help": "Do not train the bottom K transformer layers."})
    freeze_encoder: bool = field(
        default=False, metadata={"help": "Train the heads only (linear probing of the encoder)."}
    )
    layerwise_lr_decay: float | None = field(
        default=None,
        metadata={"help": "Layer i of L gets learning_rate * decay^(L - i); embeddings decay^L. In (0, 1]."},
    )
    head_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the task heads; defaults to learning_rate."}
    )
    push_to_hub: bool = field(
        default=False, metadata={"help": "Upload the model to the Hub (main process; see hub_strategy)."}
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Hub repo to push to, e.g. me/minilm-glue (needed with push_to_hub)."}
    )
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repo as private."})
    hub_strategy: str = field(
        default="end", metadata={"help": "'end': push the final model; 'best': also at each new best evaluation."}
    )
    gradient_similarity_steps: int | None = field(
        default=None,
        metadata={
            "help": "Every N steps, record the task x task cosine of gradients on the shared parameters "
            "(fixed probe batches); saved as gradient_similarity.json and .png."
        },
    )
    gradual_unfreezing_steps: int | None = field(
        default=None,
        metadata={"help": "ULMFiT: start with the heads only, unfreeze one more layer from the top every N steps."},
    )

    def __post_init__(self) -> None:
        if self.mixed_precision is not None:
            check_choice("train.mixed_precision", self.mixed_precision, MIXED_PRECISION_CHOICES)
        if self.torch_compile_mode is not None:
            check_choice("train.torch_compile_mode", self.torch_compile_mode, COMPILE_MODE_CHOICES)
        if self.torch_compile is False and (self.torch_compile_backend or self.torch_compile_mode):
            raise ConfigError("train.torch_compile=false with a torch_compile_backend/mode: drop one of them")
        check_choice("train.lr_scheduler_type", self.lr_scheduler_type, SCHEDULER_CHOICES)
        check_choice("train.optim", self.optim, OPTIM_CHOICES)
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
            "head_learning_rate",
            "gradual_unfreezing_steps",
            "gradient_similarity_steps",
        ):
            check_positive(f"train.{name}", getattr(self, name))
        for name in ("seed", "weight_decay", "warmup_steps", "dataloader_num_workers", "freeze_layers"):
            check_positive(f"train.{name}", getattr(self, name), allow_zero=True)
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio={self.warmup_ratio!r} must be in [0, 1)")
        check_choice("train.hub_strategy", self.hub_strategy, ("end", "best"))
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("train.push_to_hub=true needs train.hub_model_id (e.g. your-name/model-name)")
        if self.push_to_hub and self.hub_strategy == "best" and not self.load_best_model_at_end:
            raise ConfigError(
                "train.hub_strategy='best' pushes the best model: it needs train.load_best_model_at_end=true"
            )
        if self.layerwise_lr_decay is not None and not 0 < self.layerwise_lr_decay <= 1:
            raise ConfigError(f"train.layerwise_lr_decay={self.layerwise_lr_decay!r} must be in (0, 1]")
        if self.freeze_encoder and (self.gradual_unfreezing_steps or self.layerwise_lr_decay):
            raise ConfigError(
                "train.freeze_encoder=true trains no encoder layer: drop gradual_unfreezing_steps / layerwise_lr_decay"
            )

    @property
    def freezes_encoder_parts(self) -> bool:
        return self.freeze_embeddings or self.freeze_layers > 0 or self.freeze_encoder


PEFT_MODES = ("shared", "per_task")


@dataclass
class PeftSection:
    """PEFT adapters on the encoder (see hfmtl/adapters.py); the heads always train in full."""

    config: dict[str, Any] = field(
        metadata={
            "help": "Any PEFT config as a mapping, passed to peft.get_peft_config, e.g. "
            "{peft_type: LORA, r: 8, lora_alpha: 16, target_modules: [query, value]}."
        }
    )
    mode: str = field(
        default="shared", metadata={"help": "'shared': one adapter for all tasks; 'per_task': one adapter per task."}
    )

    def __post_init__(self) -> None:
        check_choice("peft.mode", self.mode, PEFT_MODES)
        if "peft_type" not in self.config:
            raise ConfigError("peft.config needs peft_type (e.g. LORA, ADALORA, IA3, PROMPT_TUNING)")


@dataclass
class StageConfig:
    """One stage of a staged run: a subset of the tasks, trained from the previous stage's result."""

    tasks: list[str] = field(metadata={"help": "Names of tasks (from `tasks:`) trained in this stage."})
    train: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Overrides of `train:` for this stage (max_steps, learning_rate...)."}
    )
    sampling: dict[str, Any] = field(default_factory=dict, metadata={"help": "Overrides of `sampling:`."})
    peft: dict[str, Any] | None = field(
        default=None, metadata={"help": "This stage's `peft:` section (default: the top-level one, if any)."}
    )


STEP_CHOICES = ("one_task", "all_tasks")
# what a one-task step can use: the others weigh or combine several tasks within one step
ONE_TASK_METHODS = ("equal", "fixed", "initial_loss", "uncertainty")


@dataclass
class BalancingConfig:
    """How tasks are weighed against each other (see hfmtl/balancing/ and hfmtl/steps.py)."""

    step: str = field(
        default="one_task",
        metadata={"help": "'one_task': each optimizer step trains one sampled task; 'all_tasks': every task."},
    )
    method: str = field(
        default="equal",
        metadata={
            "help": "A loss weighting (equal, fixed, uncertainty, dwa, gradnorm, rlw, famo, initial_loss) "
            "or a gradient method (pcgrad, cagrad, gradvac, mgda, imtl_g, nash_mtl, aligned_mtl)."
        },
    )
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "The method's options, e.g. {c: 0.4}."})
    tasks_per_step: int | None = field(
        default=None, metadata={"help": "'all_tasks' with a sampled subset of this many tasks per step."}
    )

    def __post_init__(self) -> None:
        from .balancing import BALANCERS  # the registry imports typed_config only; late to keep config light

        check_choice("balancing.step", self.step, STEP_CHOICES)
        check_choice("balancing.method", self.method, sorted(BALANCERS))
        check_positive("balancing.tasks_per_step", self.tasks_per_step)
        if self.step == "one_task" and self.method not in ONE_TASK_METHODS:
            raise ConfigError(
                f"balancing.method={self.method!r} weighs several tasks within one step: set balancing.step=all_tasks "
                f"(with one task per step only {', '.join(ONE_TASK_METHODS)} apply)"
            )
        if self.tasks_per_step is not None and self.step != "all_tasks":
            raise ConfigError("balancing.tasks_per_step applies to balancing.step=all_tasks")


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
        if self.stages is not None:
            self._check_stages()
            return  # sampling weights and the rest are checked per stage (see hfmtl/stages.py)
        unknown = set(self.sampling.weights or {}) - set(self.tasks)
        if unknown:
            raise ConfigError(
                f"sampling.weights names unknown task(s) {sorted(unknown)}; tasks are {sorted(self.tasks)}"
            )
        if self.peft is not None and self.train.freezes_encoder_parts:
            raise ConfigError("peft already freezes the encoder's weights: drop train.freeze_* (or peft)")

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
                "overwrite_output_dir",
                "mixed_precision",
                "torch_compile",
                "torch_compile_backend",
                "torch_compile_mode",
            )
            for key in (*whole_run, "push_to_hub", "hub_model_id"):
                if key in stage.train:
                    raise ConfigError(f"stages.{name}.train.{key} is set for the whole run: move it to `train:`")

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that `config_from_dict` turns back into an equal RunConfig."""
        return dataclasses.asdict(self)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from a plain nested dict (e.g. parsed YAML)."""
    from .tasks import task_config_from_dict  # tasks import config; import late to avoid a cycle

    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping with the sections model, tasks, train (and sampling)")
    sections = {"model", "tasks", "train", "sampling", "peft", "balancing", "stages"}
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
        peft=None if data.get("peft") is None else build_dataclass(PeftSection, data["peft"], "peft"),
        balancing=build_dataclass(BalancingConfig, data.get("balancing"), "balancing"),
        stages=_build_stages(data.get("stages")),
    )


def _build_stages(data: Any) -> dict[str, StageConfig] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError("stages must be a mapping: stage_name -> {tasks: [...], train: {...}}, in training order")
    return {str(name): build_dataclass(StageConfig, spec, f"stages.{name}") for name, spec in data.items()}


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
