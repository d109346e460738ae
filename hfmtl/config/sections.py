"""The sections of a run config other than `train:` (see train.py) and `tasks:` (each task type's own
config, in hfmtl/tasks/): the shared encoder, task sampling, PEFT, balancing and stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from ..typed import check_choice, check_positive

# The allowed values of a choice are said once, in its Literal type; `hfmtl.typed` checks them and
# `typing.get_args` lists them (hfmtl/config/reference.py, hfmtl/training/sampling.py).
Pooling = Literal["cls", "mean", "last", "auto"]
InitHeads = Literal["auto", "none"]
SamplingStrategy = Literal["proportional", "temperature", "uniform", "round_robin", "weights"]
PeftMode = Literal["shared", "per_task"]
BalancingStep = Literal["one_task", "all_tasks"]


@dataclass
class ModelConfig:
    """The shared encoder."""

    name_or_path: str = field(metadata={"help": "Hub id or local directory of any AutoModel encoder."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to use; defaults to name_or_path."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the encoder."})
    pooling: Pooling = field(
        default="auto",
        metadata={
            "help": "Sentence representation: the first token's state (cls), the mean of all (mean), the last "
            "non-padding token's (last); auto: last for a decoder (causal) model, cls for any other encoder. "
            "The model saves what auto became."
        },
    )
    encoder_only: bool | Literal["auto"] = field(
        default="auto",
        metadata={
            "help": "Use only the encoder stack of an encoder-decoder model (T5, mT5, BART, mBART): hfmtl gives "
            "a backbone no decoder inputs. auto: true exactly for encoder-decoder models; false for one is "
            "refused. The model saves what auto became."
        },
    )
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
    init_heads: InitHeads | list[str] = field(
        default="auto",
        metadata={
            "help": "With init_from: 'auto' keeps every matching head, 'none' keeps none, a list of task "
            "names keeps exactly those (an error if one cannot be kept)."
        },
    )

    def __post_init__(self) -> None:
        check_positive("model.max_length", self.max_length)
        if self.classifier_dropout is not None and not 0 <= self.classifier_dropout < 1:
            raise ConfigError(f"model.classifier_dropout={self.classifier_dropout!r} must be in [0, 1)")


@dataclass
class SamplingConfig:
    """How the task of each optimizer step is drawn (see `hfmtl.training.sampling`)."""

    strategy: SamplingStrategy = field(
        default="proportional",
        metadata={
            "help": "proportional: p_t ∝ n_t (capped at max_examples); temperature: p_t ∝ n_t^(1/T); uniform; "
            "round_robin: the tasks in turn; weights: p_t ∝ weights[t]."
        },
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
        check_positive("sampling.temperature", self.temperature)
        check_positive("sampling.max_examples", self.max_examples)
        if self.strategy == "weights" and not self.weights:
            raise ConfigError("sampling.strategy='weights' needs sampling.weights: {task_name: weight, ...}")
        for name, weight in (self.weights or {}).items():
            check_positive(f"sampling.weights.{name}", weight, allow_zero=True)


@dataclass
class PeftSection:
    """PEFT adapters on the encoder (see hfmtl/model/adapters.py); the heads always train in full."""

    config: dict[str, Any] = field(
        metadata={
            "help": "Any PEFT config as a mapping, passed to peft.get_peft_config, e.g. "
            "{peft_type: LORA, r: 8, lora_alpha: 16, target_modules: [query, value]}."
        }
    )
    mode: PeftMode = field(
        default="shared", metadata={"help": "'shared': one adapter for all tasks; 'per_task': one adapter per task."}
    )

    def __post_init__(self) -> None:
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


def balancing_methods() -> list[str]:
    """The names of the registered balancing methods: ``balancing.method``'s allowed values.

    The registry (hfmtl/balancing/) imports torch: it is read only when a balancing section is built.
    """
    from ..balancing import BALANCERS

    return sorted(BALANCERS)


# what a one-task step can use: the others weigh or combine several tasks within one step
ONE_TASK_METHODS = ("equal", "fixed", "initial_loss", "uncertainty")


@dataclass
class BalancingConfig:
    """How tasks are weighed against each other (see hfmtl/balancing/ and hfmtl/training/steps.py)."""

    step: BalancingStep = field(
        default="one_task",
        metadata={"help": "'one_task': each optimizer step trains one sampled task; 'all_tasks': every task."},
    )
    method: str = field(
        default="equal",
        metadata={
            "help": "A loss weighting or a gradient method (docs/balancing.md describes each); with step "
            f"one_task only {', '.join(ONE_TASK_METHODS)} apply.",
            "choices": balancing_methods,  # a registry, so not a Literal: listed when asked
        },
    )
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "The method's options, e.g. {c: 0.4}."})
    tasks_per_step: int | None = field(
        default=None, metadata={"help": "'all_tasks' with a sampled subset of this many tasks per step."}
    )

    def __post_init__(self) -> None:
        check_choice("balancing.method", self.method, balancing_methods())
        check_positive("balancing.tasks_per_step", self.tasks_per_step)
        if self.step == "one_task" and self.method not in ONE_TASK_METHODS:
            raise ConfigError(
                f"balancing.method={self.method!r} weighs several tasks within one step: set balancing.step=all_tasks "
                f"(with one task per step only {', '.join(ONE_TASK_METHODS)} apply)"
            )
        if self.tasks_per_step is not None and self.step != "all_tasks":
            raise ConfigError("balancing.tasks_per_step applies to balancing.step=all_tasks")
