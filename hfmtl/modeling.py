"""The multi-task model: one shared `AutoModel` encoder, one head per task.

`MultiTaskConfig` nests the encoder's config and one head spec per task (like `EncoderDecoderConfig`
nests two configs), so a saved model is rebuilt from its ``config.json`` alone. Both classes are
registered with `AutoConfig` / `AutoModel` when `hfmtl` is imported, so no `trust_remote_code` is needed.

Example:
    >>> import hfmtl, transformers
    >>> model = transformers.AutoModel.from_pretrained("outputs/glue")      # doctest: +SKIP
    >>> out = model(task="rte", **tokenizer(premise, hypothesis, return_tensors="pt"))  # doctest: +SKIP
    >>> out.logits.shape                                                   # doctest: +SKIP
    torch.Size([1, 2])
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import ModelOutput

from .errors import ConfigError
from .tasks import get_task_class


class MultiTaskConfig(PreTrainedConfig):
    r"""Configuration of a `MultiTaskModel`.

    Args:
        encoder: the encoder's config (a `PreTrainedConfig` or its dict).
        tasks: task_name -> head spec (``{"type": ..., "num_labels": ..., ...}``) as each task type
            writes it (see `Task.head_spec`).
        pooling: 'cls' or 'mean': how sequence-level heads reduce the encoder's output.
        classifier_dropout: dropout in the heads; None uses the encoder's ``hidden_dropout_prob``.
    """

    model_type = "hfmtl"
    sub_configs_defaults = {"encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    encoder: PreTrainedConfig | dict | None = None
    tasks: dict | None = None
    pooling: str = "cls"
    classifier_dropout: float | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.tasks = dict(self.tasks or {})
        for spec in self.tasks.values():
            # JSON turns integer keys into strings; heads and users index id2label by int
            if "id2label" in spec:
                spec["id2label"] = {int(k): v for k, v in spec["id2label"].items()}

    @property
    def hidden_size(self) -> int:
        encoder = self.encoder
        for name in ("hidden_size", "dim", "d_model"):
            if hasattr(encoder, name):
                return int(getattr(encoder, name))
        raise ConfigError(f"cannot find the hidden size of encoder type {encoder.model_type!r}")


@dataclass
class MultiTaskOutput(ModelOutput):
    """Output of `MultiTaskModel.forward`.

    Attributes:
        loss: the task's loss when `labels` were given.
        logits: (batch, num_labels) for sequence tasks, (batch, length, num_labels) for token tasks,
            (batch, choices) for multiple choice, (batch, length, 2) start/end logits for QA.
        hidden_states: the encoder's last hidden state.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None


def _encoder_kwargs(encoder_config: PreTrainedConfig) -> dict[str, Any]:
    """Build the encoder without its pooler where it has one: no head here uses it, and under DDP an
    unused parameter would cost a graph walk every step (`find_unused_parameters`)."""
    model_class = MODEL_MAPPING.get(type(encoder_config), None)
    if model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        return {"add_pooling_layer": False}
    return {}


class MultiTaskModel(PreTrainedModel):
    """A shared encoder with one head per task; `forward(task=..., **batch)` runs one task's head.

    Build it from a pretrained encoder with `from_encoder`, or load a saved one with `from_pretrained`
    (also through `transformers.AutoModel` once `hfmtl` is imported).
    """

    config_class = MultiTaskConfig
    base_model_prefix = "encoder"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: MultiTaskConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        if encoder is None:
            encoder = AutoModel.from_config(config.encoder, **_encoder_kwargs(config.encoder))
        self.encoder = encoder
        # DistilBERT and others take no token_type_ids, while their tokenizers may still produce them
        self._encoder_inputs = set(inspect.signature(encoder.forward).parameters)
        dropout = config.classifier_dropout
        if dropout is None:
            dropout = getattr(config.encoder, "hidden_dropout_prob", getattr(config.encoder, "dropout", 0.1))
        self.heads = nn.ModuleDict(
            {
                name: get_task_class(spec["type"]).build_head(spec, config.hidden_size, dropout, config.pooling)
                for name, spec in config.tasks.items()
            }
        )
        self.post_init()

    @classmethod
    def from_encoder(
        cls,
        encoder_name_or_path: str,
        tasks: dict[str, dict[str, Any]],
        pooling: str = "cls",
        classifier_dropout: float | None = None,
        **encoder_kwargs: Any,
    ) -> MultiTaskModel:
        """A new multi-task model on a pretrained encoder, with freshly initialised heads.

        Args:
            encoder_name_or_path: Hub id or local directory of any `AutoModel` encoder.
            tasks: task_name -> head spec (see `Task.head_spec`).
            pooling: 'cls' or 'mean'.
            classifier_dropout: dropout in the heads (None: the encoder's hidden dropout).
            **encoder_kwargs: passed to `AutoModel.from_pretrained` (e.g. ``revision``).
        """
        try:
            encoder_config = AutoConfig.from_pretrained(encoder_name_or_path, **encoder_kwargs)
            encoder = AutoModel.from_pretrained(
                encoder_name_or_path, **_encoder_kwargs(encoder_config), **encoder_kwargs
            )
        except OSError as err:  # not found locally, not on the Hub, or the Hub is unreachable
            raise ConfigError(f"model.name_or_path={encoder_name_or_path!r} cannot be loaded: {err}") from err
        # A config's attention kernel is set recursively on its sub-configs: pass the one the encoder
        # chose, or building MultiTaskConfig would reset the shared encoder config to None (eager).
        config = MultiTaskConfig(
            encoder=encoder.config,
            tasks=tasks,
            pooling=pooling,
            classifier_dropout=classifier_dropout,
            attn_implementation=encoder.config._attn_implementation,
        )
        return cls(config, encoder=encoder)

    def _init_weights(self, module: nn.Module) -> None:
        # heads only: the encoder initialises its own modules (and pretrained ones are left alone)
        std = getattr(self.config.encoder, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(
        self,
        task: str,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        choice_mask: torch.Tensor | None = None,
        **encoder_kwargs: Any,
    ) -> MultiTaskOutput:
        """Encode the batch and apply `task`'s head.

        Args:
            task: a task name from ``config.tasks``.
            input_ids, attention_mask, token_type_ids: encoder inputs, (batch, length); a third
                dimension, (batch, choices, length), means multiple choice: choices are encoded
                separately and their scores returned as (batch, choices).
            labels: targets in the task type's format; when given, `loss` is computed.
            choice_mask: (batch, choices) bool, False for padded choices (their score becomes -inf).
        """
        if task not in self.heads:
            raise KeyError(f"unknown task {task!r}; this model has heads for {sorted(self.heads)}")
        spec = self.config.tasks[task]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        inputs = {k: v for k, v in inputs.items() if v is not None and k in self._encoder_inputs}
        choices_shape = None
        if input_ids is not None and input_ids.dim() == 3:
            choices_shape = input_ids.shape[:2]
            inputs = {k: v.flatten(0, 1) for k, v in inputs.items()}
        hidden = self.encoder(**inputs, **encoder_kwargs, return_dict=True).last_hidden_state
        logits = self.heads[task](hidden, inputs.get("attention_mask"))
        if choices_shape is not None:
            logits = logits.view(*choices_shape)
            if choice_mask is not None:
                logits = logits.masked_fill(~choice_mask.bool(), torch.finfo(logits.dtype).min)
        loss = None
        if labels is not None:
            loss = get_task_class(spec["type"]).compute_loss(spec, logits, labels)
        return MultiTaskOutput(loss=loss, logits=logits, hidden_states=hidden)


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModel` resolve ``model_type: hfmtl`` (idempotent)."""
    # ValueError: already registered by an earlier import
    with contextlib.suppress(ValueError):
        AutoConfig.register(MultiTaskConfig.model_type, MultiTaskConfig)
    with contextlib.suppress(ValueError):
        AutoModel.register(MultiTaskConfig, MultiTaskModel)
