"""The `train:` section of a run config: optimisation, evaluation, checkpointing and output."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..typed import check_choice, check_positive

MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
# torch.compile's modes (https://pytorch.org/docs/stable/generated/torch.compile.html)
COMPILE_MODE_CHOICES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SCHEDULER_CHOICES = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial")
# AdamW implementations, named as transformers' TrainingArguments.optim names them
OPTIM_CHOICES = ("adamw_torch_fused", "adamw_torch")


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
