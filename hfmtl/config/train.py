"""The `train:` section of a run config: optimisation, evaluation, checkpointing and output.

Keys are named as transformers 5's `TrainingArguments` names the same thing. The names of the previous
release (``warmup_ratio``, ``group_by_length``, ``hub_private``) still load, with a warning, until the
next one: see `TrainConfig.RENAMED_KEYS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..errors import ConfigError
from ..typed import RenamedKey, check_positive

MixedPrecision = Literal["no", "fp16", "bf16"]
# torch.compile's modes (https://pytorch.org/docs/stable/generated/torch.compile.html)
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
SchedulerType = Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"]
# AdamW implementations, named as transformers' TrainingArguments.optim names them
Optim = Literal["adamw_torch_fused", "adamw_torch"]
TrainSamplingStrategy = Literal["random", "group_by_length"]
HubStrategy = Literal["end", "best"]
NonFinite = Literal["error", "skip"]


def _warmup_ratio_as_steps(key: str, ratio: float) -> float:
    if not 0 <= ratio < 1:
        raise ConfigError(f"{key}={ratio!r} must be in [0, 1)")
    return ratio  # a warmup_steps below 1 is a ratio


def _grouping_as_strategy(key: str, group_by_length: bool) -> str:
    return "group_by_length" if group_by_length else "random"


@dataclass
class TrainConfig:
    """Optimisation, evaluation, checkpointing and output. Names follow transformers 5's TrainingArguments."""

    # old name -> new name, for one release (the previous release saved every key: warmup_ratio beside
    # a warmup_steps of 0, which meant "use the ratio")
    RENAMED_KEYS: ClassVar[dict[str, RenamedKey]] = {
        "warmup_ratio": RenamedKey("warmup_steps", _warmup_ratio_as_steps, old_type=float, coexisted=True),
        "group_by_length": RenamedKey("train_sampling_strategy", _grouping_as_strategy, old_type=bool),
        "hub_private": RenamedKey("hub_private_repo"),
    }

    output_dir: str = field(metadata={"help": "Where the model, metrics, config, log and checkpoints go."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over in a non-empty output_dir: an earlier hfmtl run's checkpoints, best model, metrics, "
            "log and model files there are removed first (other files stay; a directory that holds no hfmtl run "
            "loses nothing). A resume that finds its checkpoint wins over it."
        },
    )
    seed: int = field(
        default=42, metadata={"help": "Seed of everything random: new heads, data order, task sampling, dropout."}
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps in total; overrides num_train_epochs."}
    )
    num_train_epochs: float = field(
        default=1.0,
        metadata={"help": "One epoch = as many steps as all tasks' train batches together (see sampling.py)."},
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Default per-task batch size."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Batch size of evaluation."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Batches whose gradients add up to one optimizer step."}
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate of AdamW (after warmup)."})
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW's decoupled weight decay, on weight matrices only (not biases, norms)."}
    )
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW's beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW's beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW's epsilon."})
    optim: Optim = field(
        default="adamw_torch_fused",
        metadata={
            "help": "AdamW kernel: adamw_torch_fused (one fused kernel for all parameters; the Trainer's default "
            "in transformers 5) or adamw_torch (a loop over the parameters)."
        },
    )
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Clip the gradient norm; null: off."})
    nonfinite: NonFinite = field(
        default="error",
        metadata={
            "help": "A task's training loss that is NaN or infinite: error stops the run with one line naming the "
            "task and the step, before that step changes any weight; skip skips that optimizer step on every "
            "process (weights, optimizer, schedule and balancing state stay as they were), logs it and counts it "
            "in metrics.json."
        },
    )
    lr_scheduler_type: SchedulerType = field(
        default="linear", metadata={"help": "Learning-rate schedule after warmup (transformers.get_scheduler)."}
    )
    warmup_steps: float = field(
        default=0.0,
        metadata={
            "help": "Linear warmup from 0 to learning_rate: a number in [0, 1) is a ratio of the total steps, "
            "a whole number >= 1 a count of steps (as in transformers 5; replaces warmup_ratio)."
        },
    )
    mixed_precision: MixedPrecision | None = field(
        default=None,
        metadata={
            "help": "Precision, through Accelerate. Unset: what `accelerate launch --mixed_precision` or "
            "`accelerate config` says (else no). fp16 needs a GPU."
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute the encoder's activations in the backward pass instead of keeping them: less "
            "memory, about a third more compute. For any encoder whose transformers class supports it."
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
    torch_compile_mode: CompileMode | None = field(default=None, metadata={"help": "torch.compile mode."})
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate every N steps (and always at the end)."})
    save_steps: int | None = field(default=None, metadata={"help": "Checkpoint every N steps; null: never."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep the last K checkpoints."})
    logging_steps: int = field(default=50, metadata={"help": "Log the training losses every N steps."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "A checkpoint directory, or 'latest': the newest checkpoint of the run in output_dir (a fresh "
            "start when there is none; nothing at all when that run finished). Refused when the config changes "
            "what the checkpoint's run trained with (see resume_extend_max_steps)."
        },
    )
    resume_extend_max_steps: bool = field(
        default=False,
        metadata={
            "help": "With resume_from_checkpoint: accept another training length (max_steps, num_train_epochs) "
            "than the checkpoint's run had, so that a finished or interrupted run trains on to the new length; "
            "the learning-rate schedule is recomputed for it. Never fewer steps than were trained."
        },
    )
    train_sampling_strategy: TrainSamplingStrategy = field(
        default="group_by_length",
        metadata={
            "help": "Order of each task's training examples: group_by_length batches examples of similar "
            "length (far less padding; batches and epochs still shuffled), random shuffles them one by one."
        },
    )
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Save the weights of the best evaluation (by metric_for_best_model)."}
    )
    metric_for_best_model: str = field(
        default="eval/mean",
        metadata={
            "help": "The evaluation that picks the best model: eval/mean (each task's main metric, signed so "
            "that higher is better, averaged over tasks) or one task's metric, eval/<task>/<metric>; the "
            "eval/ may be left out."
        },
    )
    greater_is_better: bool | None = field(
        default=None,
        metadata={
            "help": "Whether a higher metric_for_best_model is better. Unset: true for eval/mean; for a task's "
            "metric, tasks.<task>.greater_is_better for its main metric, else hfmtl's knowledge of the metric."
        },
    )
    report_to: list[str] = field(default_factory=list, metadata={"help": "Accelerate trackers, e.g. [tensorboard]."})
    dataloader_num_workers: int = field(
        default=0, metadata={"help": "Worker processes per task's data loader (0: in the main process)."}
    )
    # Freezing and learning-rate schedules of the encoder (see hfmtl/model/freezing.py).
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
    hub_private_repo: bool = field(
        default=False,
        metadata={"help": "Create the Hub repo private (false: the namespace's default visibility)."},
    )
    hub_strategy: HubStrategy = field(
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
        if self.torch_compile is False and (self.torch_compile_backend or self.torch_compile_mode):
            raise ConfigError("train.torch_compile=false with a torch_compile_backend/mode: drop one of them")
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
        for name in ("seed", "weight_decay", "dataloader_num_workers", "freeze_layers"):
            check_positive(f"train.{name}", getattr(self, name), allow_zero=True)
        warmup = self.warmup_steps
        if not math.isfinite(warmup) or warmup < 0 or (warmup >= 1 and not float(warmup).is_integer()):
            raise ConfigError(
                f"train.warmup_steps={warmup!r} must be a ratio of the total steps in [0, 1) or a whole number of steps"
            )
        self.metric_for_best_model = _full_eval_key(self.metric_for_best_model)
        if self.metric_for_best_model == "eval/mean" and self.greater_is_better is False:
            raise ConfigError(
                "train.greater_is_better=false with metric_for_best_model=eval/mean: eval/mean is always "
                "higher-is-better (lower-is-better metrics enter it negated); drop train.greater_is_better"
            )
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

    def num_warmup_steps(self, total_steps: int) -> int:
        """The warmup of a training of `total_steps` optimizer steps, as transformers 5's
        ``TrainingArguments.get_warmup_steps`` counts it: `warmup_steps` itself when >= 1, else that
        ratio of `total_steps`, rounded up.

        Example:
            >>> TrainConfig(output_dir="out", warmup_steps=0.1).num_warmup_steps(250)
            25
            >>> TrainConfig(output_dir="out", warmup_steps=40).num_warmup_steps(250)
            40
        """
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        return math.ceil(self.warmup_steps * total_steps)


def _full_eval_key(name: Any) -> str:
    """``metric_for_best_model`` as the full key the evaluation logs: eval/mean or eval/<task>/<metric>."""
    parts = str(name).removeprefix("eval/").split("/", 1)
    if parts == ["mean"]:
        return "eval/mean"
    if len(parts) == 2 and all(parts):
        return f"eval/{parts[0]}/{parts[1]}"
    raise ConfigError(
        f"train.metric_for_best_model={name!r} must be eval/mean or eval/<task>/<metric> (e.g. eval/rte/accuracy)"
    )
