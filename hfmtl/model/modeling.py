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

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from ..errors import ConfigError, HfmtlError
from ..tasks import Unsupported, get_task_class
from . import adapters
from .backbone import check_model_path, check_same_architecture, encoder_kwargs, portable_reference
from .configuration import MultiTaskConfig
from .encoder_stack import encoder_stack, is_encoder_decoder, resolve_encoder_only
from .pooling import causal_position_ids, is_causal
from .shared_input import group_losses
from .weights import load_saved_weights


@dataclass
class MultiTaskOutput(ModelOutput):
    """Output of `MultiTaskModel.forward`.

    Attributes:
        loss: the task's loss when `labels` were given.
        logits: (batch, num_labels) for sequence tasks, (batch, length, num_labels) for token tasks,
            (batch, choices) for multiple choice, (batch, length, 2) start/end logits for QA.
        hidden_states: the encoder's last hidden state.
        task_losses: task_name -> loss, for a forward over several tasks' batches (``task_batches``).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None
    task_losses: dict[str, torch.Tensor] | None = None


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
            encoder = AutoModel.from_config(config.encoder, **encoder_kwargs(config.encoder))
            if config.encoder_only:
                encoder = encoder_stack(encoder)
        self.encoder = encoder
        # DistilBERT and others take no token_type_ids, while their tokenizers may still produce them
        self.encoder_input_names: set[str] = set(inspect.signature(encoder.forward).parameters)
        # a decoder counts positions over the real tokens: a left-padded input keeps its positions
        self._positions_from_mask = is_causal(config.encoder) and "position_ids" in self.encoder_input_names
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
        pooling: str = "auto",
        classifier_dropout: float | None = None,
        encoder_only: bool | str = "auto",
        **from_pretrained_kwargs: Any,
    ) -> MultiTaskModel:
        """A new multi-task model on a pretrained encoder, with freshly initialised heads.

        Args:
            encoder_name_or_path: Hub id or local directory of any `AutoModel` encoder.
            tasks: task_name -> head spec (see `Task.head_spec`).
            pooling: 'cls', 'mean', 'last', or 'auto' (the encoder's own: 'last' for a decoder, else 'cls').
            classifier_dropout: dropout in the heads (None: the encoder's hidden dropout).
            encoder_only: 'auto', True or False: use only the encoder stack of an encoder-decoder model
                (hfmtl/model/encoder_stack.py).
            **from_pretrained_kwargs: passed to `AutoModel.from_pretrained` (e.g. ``revision``).
        """
        encoder_name_or_path = check_model_path(encoder_name_or_path, "model.name_or_path")
        try:
            encoder_config = AutoConfig.from_pretrained(encoder_name_or_path, **from_pretrained_kwargs)
            use_encoder_stack = resolve_encoder_only(encoder_only, encoder_config)  # before any weights load
            encoder = AutoModel.from_pretrained(
                encoder_name_or_path, **encoder_kwargs(encoder_config), **from_pretrained_kwargs
            )
        except OSError as err:  # not found locally, not on the Hub, or the Hub is unreachable
            raise ConfigError(f"model.name_or_path={encoder_name_or_path!r} cannot be loaded: {err}") from err
        # A config's attention kernel is set recursively on its sub-configs: pass the one the encoder
        # chose, or building MultiTaskConfig would reset the shared encoder config to None (eager).
        config = MultiTaskConfig(
            encoder=encoder.config,  # the whole model's config (T5's encoder stack holds an altered copy)
            tasks=tasks,
            pooling=pooling,
            classifier_dropout=classifier_dropout,
            attn_implementation=encoder.config._attn_implementation,
            encoder_only=use_encoder_stack,
        )
        return cls(config, encoder=encoder_stack(encoder) if use_encoder_stack else encoder)

    def _init_weights(self, module: nn.Module) -> None:
        # heads only: the encoder initialises its own modules (and pretrained ones are left alone)
        std = getattr(self.config.encoder, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(
        self,
        task: str | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | dict[str, torch.Tensor] | None = None,
        choice_mask: torch.Tensor | None = None,
        task_batches: dict[str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> MultiTaskOutput:
        """Encode the batch and apply `task`'s head (or each task's, with `task_batches`).

        Args:
            task: a task name from ``config.tasks``.
            input_ids, attention_mask, token_type_ids: encoder inputs, (batch, length); a third
                dimension, (batch, choices, length), means multiple choice: choices are encoded
                separately and their scores returned as (batch, choices).
            labels: targets in the task type's format; when given, `loss` is computed. Or task_name -> targets,
                without `task`: an input group's batch, one encoder pass for every head named (shared_input.py).
            choice_mask: (batch, choices) bool, False for padded choices (their score becomes -inf).
            task_batches: task_name -> that task's batch (with labels), instead of `task` and the
                tensors: one call returns every task's loss in `task_losses`. One call, so that DDP
                sees one forward for one backward when a step trains every task (see hfmtl/training/steps.py).
            **kwargs: passed to the encoder.
        """
        if task_batches is not None:
            losses = {}
            for name, batch in task_batches.items():  # an input group's batch is under the group's name
                out = self(**batch) if isinstance(batch.get("labels"), dict) else self(task=name, **batch)
                losses.update(out.task_losses or {name: out.loss})
            return MultiTaskOutput(task_losses=losses)
        if isinstance(labels, dict):
            return MultiTaskOutput(task_losses=group_losses(self, input_ids, attention_mask, token_type_ids, labels))
        if task not in self.heads:
            raise KeyError(f"unknown task {task!r}; this model has heads for {sorted(self.heads)}")
        if self.config.peft and self.config.peft["mode"] == "per_task":
            adapters.activate_adapter(self, task)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        inputs = {k: v for k, v in inputs.items() if v is not None and k in self.encoder_input_names}
        choices_shape = None
        if input_ids is not None and input_ids.dim() == 3:
            choices_shape = input_ids.shape[:2]
            inputs = {k: v.flatten(0, 1) for k, v in inputs.items()}
        hidden = self._encode(inputs, **kwargs)
        logits = self.heads[task](hidden, inputs.get("attention_mask"))
        if choices_shape is not None:
            logits = logits.view(*choices_shape)
            if choice_mask is not None:
                logits = logits.masked_fill(~choice_mask.bool(), torch.finfo(logits.dtype).min)
        loss = None
        if labels is not None:
            loss = get_task_class(self.config.tasks[task]["type"]).compute_loss(self.config.tasks[task], logits, labels)
        return MultiTaskOutput(loss=loss, logits=logits, hidden_states=hidden)

    def _encode(self, inputs: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
        if self._positions_from_mask and "attention_mask" in inputs and "position_ids" not in kwargs:
            kwargs["position_ids"] = causal_position_ids(inputs["attention_mask"])
        hidden = self.encoder(**inputs, **kwargs, return_dict=True).last_hidden_state
        # prompt methods put virtual tokens in front; heads expect one vector per real token
        virtual = adapters.num_virtual_tokens(self)
        return hidden[:, virtual:] if virtual else hidden

    def forward_mixed(
        self,
        tasks: list[str],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """One encoder pass over a batch whose rows belong to different tasks (inference).

        Row i goes through task ``tasks[i]``'s adapter (per-task PEFT: PEFT's per-row ``adapter_names``)
        and head; the logits equal running each task's rows alone. Rows of a task whose type refuses
        (`Task.check_mixed_batch`: multiple choice, whose inputs need a choices dimension) are not accepted.

        Returns:
            One logits tensor per row: (num_labels,) for sequence tasks, (length, num_labels) for token
            tasks and QA.

        Example:
            >>> logits = model.forward_mixed(["rte", "ner"], **tokenizer(texts, padding=True, return_tensors="pt"))  # doctest: +SKIP
        """
        if len(tasks) != input_ids.shape[0]:
            raise ValueError(f"{len(tasks)} task names for a batch of {input_ids.shape[0]} rows")
        for task in set(tasks):
            if task not in self.heads:
                raise KeyError(f"unknown task {task!r}; this model has heads for {sorted(self.heads)}")
            try:
                get_task_class(self.config.tasks[task]["type"]).check_mixed_batch(self.config.tasks[task])
            except Unsupported as err:
                raise ValueError(f"task {task!r} {err}: run it with forward(task=...)") from None
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        inputs = {k: v for k, v in inputs.items() if v is not None and k in self.encoder_input_names}
        hidden = self._encode(inputs, **adapters.mixed_adapter_names(self, tasks))
        rows: list[torch.Tensor | None] = [None] * len(tasks)
        for task in dict.fromkeys(tasks):
            index = torch.tensor([i for i, t in enumerate(tasks) if t == task], device=hidden.device)
            mask = attention_mask.index_select(0, index) if attention_mask is not None else None
            logits = self.heads[task](hidden.index_select(0, index), mask)
            for row, value in zip(index.tolist(), logits):
                rows[row] = value
        return rows

    # --- saving and loading: a PEFT model is saved as adapters + heads only ---------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """`PreTrainedModel.save_pretrained`; with PEFT adapters, writes the adapters and heads only."""
        if self.config.peft:
            adapters.save_adapters_and_heads(self, save_directory)
            return
        if kwargs.get("state_dict") is not None:
            kwargs["state_dict"] = without_compile_prefix(kwargs["state_dict"])
        super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """`PreTrainedModel.from_pretrained`; a model saved with adapters gets its base encoder rebuilt
        (from ``config.peft["base_model"]``, or from ``base_model=`` when the base has moved: it is then
        recorded instead) and its adapters and heads re-attached."""
        base_model = kwargs.pop("base_model", None)
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        config = kwargs.get("config")
        if not isinstance(config, MultiTaskConfig):
            config = MultiTaskConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if not config.peft:
            if base_model is not None:
                raise ConfigError(
                    f"base_model={base_model!r}: {str(pretrained_model_name_or_path)!r} holds a whole model, "
                    "not adapters on a base encoder; leave base_model out"
                )
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        base = config.peft["base_model"] if base_model is None else str(base_model)
        try:
            encoder, _ = load_encoder(base, key="peft.base_model" if base_model is None else "base_model")
        except ConfigError as err:
            raise adapters.missing_base_error(err, base, str(pretrained_model_name_or_path)) from err
        check_same_architecture(config.encoder, encoder.config, "peft.base_model", base)
        config.peft = {**config.peft, "base_model": portable_reference(base)}
        model = cls(config, encoder=encoder)
        adapters.load_adapters_and_heads(model, str(pretrained_model_name_or_path), **hub_kwargs)
        model.eval()
        return model

    def push_to_hub(self, repo_id: str, *args: Any, **kwargs: Any) -> str:
        """Refused: transformers' upload would carry a generic card that says nothing of the tasks and
        that the model needs hfmtl to load. Use ``hfmtl.push_to_hub(model, repo_id, tokenizer=...)``."""
        raise HfmtlError(
            f"model.push_to_hub({repo_id!r}) would upload without hfmtl's model card: use "
            f"hfmtl.push_to_hub(model, {repo_id!r}, tokenizer=tokenizer) instead"
        )

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Load the weights `save_pretrained` wrote into `directory` into this model, in place."""
        if self.config.peft:
            adapters.load_weights_into(self, directory)
        else:
            load_saved_weights(self, directory)  # tied parameters (BART's, T5's embeddings) included


def load_encoder(
    source: str, revision: str | None = None, key: str = "model.init_from"
) -> tuple[PreTrainedModel, MultiTaskModel | None]:
    """The plain encoder of `source`, and the hfmtl model it came from (None for any other HF model).

    An hfmtl model with one shared adapter gives its merged encoder; per-task adapters cannot become one
    encoder, so such a source is refused.

    Raises:
        ConfigError: `source` does not exist, cannot be loaded, or holds per-task adapters (named by `key`).
    """
    source = check_model_path(source, key)
    try:
        config = AutoConfig.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}={source!r} cannot be loaded: {err}") from err
    if isinstance(config, MultiTaskConfig):
        model = MultiTaskModel.from_pretrained(source, revision=revision)
        if (model.config.peft or {}).get("mode") == "per_task":
            raise ConfigError(
                f"{key}={source!r} has one adapter per task, which cannot become one encoder; "
                "export a task first (hfmtl export) and start from that"
            )
        return adapters.merged_encoder(model), model
    try:
        encoder = AutoModel.from_pretrained(source, revision=revision, **encoder_kwargs(config))
    except OSError as err:
        raise ConfigError(f"{key}={source!r} cannot be loaded: {err}") from err
    # an encoder-decoder model is used as its encoder stack (encoder_stack.py), its weights too
    return (encoder_stack(encoder) if is_encoder_decoder(config) else encoder), None


def without_compile_prefix(state_dict: dict[str, Any]) -> dict[str, Any]:
    """`state_dict` with torch.compile's ``_orig_mod.`` taken out of every key.

    A state dict read through a compiled model (whole, or compiled region by region) names each
    parameter under ``_orig_mod.``; saved like that, `from_pretrained` would match no key and leave every
    weight at its random initialisation.

    Example:
        >>> list(without_compile_prefix({"_orig_mod.heads.a.weight": 1, "encoder.layer.0._orig_mod.x": 2}))
        ['heads.a.weight', 'encoder.layer.0.x']
    """
    return {key.replace("_orig_mod.", ""): value for key, value in state_dict.items()}


_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "subfolder")


# Known to transformers' Auto classes from here on (hfmtl/_auto.py stood in until now).
AutoModel.register(MultiTaskConfig, MultiTaskModel, exist_ok=True)
