"""Freezing and learning-rate schedules of the shared encoder, layer by layer.

The encoder is cut into L + 1 *layer groups*: group 0 holds the embeddings and every other encoder
parameter outside the transformer layers, groups 1..L the layers from bottom to top. On these groups:

- `freeze_encoder_parts`: static freezing (embeddings, the bottom K layers, or the whole encoder for
  linear probing) by ``requires_grad=False``; the cheap option, backward skips what is frozen.
- `build_param_groups`: AdamW param groups with layer-wise learning-rate decay (ELECTRA, DeBERTa-v3
  and BEiT fine-tune this way) and a separate head learning rate.
- `GradualUnfreezer`: ULMFiT's gradual unfreezing, by dropping gradients instead of toggling
  ``requires_grad`` (which DDP does not allow once the model is wrapped).

Layers are found by module identity, not by parameter names, so the same code works on a plain
`AutoModel` and on a PEFT `PeftModel` wrapping one (whose names gain ``base_model.model.`` prefixes);
an adapter's parameters (LoRA A/B) belong to the group of the layer they sit in.

Example:
    >>> import torch, transformers
    >>> from hfmtl import MultiTaskConfig, MultiTaskModel
    >>> encoder = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                                   intermediate_size=64, vocab_size=100)
    >>> head = {"type": "classification", "num_labels": 2, "id2label": {0: "no", 1: "yes"}}
    >>> model = MultiTaskModel(MultiTaskConfig(encoder=encoder, tasks={"rte": head}))
    >>> [len(group) for group in encoder_layer_groups(model.encoder)]   # embeddings, layer 1, layer 2
    [5, 16, 16]
    >>> freeze_encoder_parts(model, embeddings=True) > 0
    True
    >>> groups = build_param_groups(model, learning_rate=1e-3, weight_decay=0.01, layerwise_lr_decay=0.5)
    >>> [(g["name"], g["lr"]) for g in groups if not g["name"].endswith("/no_decay")]
    [('layer_2', 0.001), ('layer_1', 0.0005), ('heads', 0.001)]
    >>> optimizer = torch.optim.AdamW(groups)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from .backbone import encoder_layer_groups, encoder_type


def _group_name(index: int) -> str:
    return "embeddings" if index == 0 else f"layer_{index}"


def freeze_encoder_parts(
    model: nn.Module, *, embeddings: bool = False, bottom_layers: int = 0, encoder: bool = False
) -> int:
    """Freeze parts of ``model.encoder`` (``requires_grad=False``); the heads are never frozen.

    Only ever sets ``requires_grad=False``: what PEFT froze stays frozen. Call it after wrapping the
    encoder with PEFT (adapters added later would be trainable inside frozen layers) and before
    building the optimizer.

    Args:
        model: a `MultiTaskModel` (anything with ``.encoder``).
        embeddings: freeze group 0 (embeddings and every encoder parameter outside the layers; with
            PEFT prompt tuning that includes the virtual-token embeddings, its only trainable part).
        bottom_layers: freeze the K lowest transformer layers (0 <= K <= L).
        encoder: freeze the whole encoder (linear probing: only the heads train). Needs no layer list.

    Returns:
        How many parameter elements the chosen parts hold (all frozen now, by this call or before).

    Raises:
        ConfigError: bottom_layers is negative or more than the encoder's layers, or the layers of
            this encoder cannot be found (see `encoder_layer_groups`).

    Example:
        >>> import transformers
        >>> from hfmtl import MultiTaskConfig, MultiTaskModel
        >>> config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                                  intermediate_size=64, vocab_size=100)
        >>> head = {"type": "classification", "num_labels": 2, "id2label": {0: "no", 1: "yes"}}
        >>> model = MultiTaskModel(MultiTaskConfig(encoder=config, tasks={"rte": head}))
        >>> freeze_encoder_parts(model, encoder=True) == sum(p.numel() for p in model.encoder.parameters())
        True
        >>> sorted({name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad})
        ['heads']
    """
    if bottom_layers < 0:
        raise ConfigError(f"bottom_layers={bottom_layers!r} must be >= 0")
    if encoder:
        params = list(model.encoder.parameters())
    elif embeddings or bottom_layers:
        groups = encoder_layer_groups(model.encoder)
        num_layers = len(groups) - 1
        if bottom_layers > num_layers:
            raise ConfigError(
                f"bottom_layers={bottom_layers} is more than the {num_layers} layers of encoder type "
                f"{encoder_type(model.encoder)!r}; use at most {num_layers}, or freeze the whole encoder"
            )
        chosen = ([0] if embeddings else []) + list(range(1, bottom_layers + 1))
        params = [p for index in chosen for p in groups[index]]
    else:
        return 0
    for param in params:
        param.requires_grad_(False)
    return sum(p.numel() for p in params)


def build_param_groups(
    model: nn.Module,
    *,
    learning_rate: float,
    weight_decay: float,
    layerwise_lr_decay: float | None = None,
    head_learning_rate: float | None = None,
) -> list[dict[str, Any]]:
    """AdamW param groups over the trainable parameters, with layer-wise lr decay and a head lr.

    Weight decay applies to matrices only (``ndim >= 2``); biases and norm weights get 0.0. With
    ``layerwise_lr_decay=d`` the top layer L trains at `learning_rate`, layer i at
    ``learning_rate * d ** (L - i)`` and group 0 (embeddings) at ``learning_rate * d ** L``. A scheduler
    (`transformers.get_scheduler`) scales every group by the same factor, so the ratios hold throughout.

    Groups are ordered top layer first, so that ``scheduler.get_last_lr()[0]`` is the schedule of
    `learning_rate` whenever the top layer trains. Frozen parameters are left out; empty groups too.

    Args:
        model: a `MultiTaskModel` (``.encoder`` and ``.heads``); any other parameter of the model goes
            to an "other" group at `learning_rate`.
        learning_rate: the encoder's learning rate (of its top layer under layer-wise decay).
        weight_decay: AdamW's decoupled weight decay for matrices.
        layerwise_lr_decay: d in (0, 1]; None: one learning rate for the whole encoder.
        head_learning_rate: the heads' learning rate; None: `learning_rate`.

    Returns:
        Dicts with "params", "lr", "weight_decay" and "name": "layer_3", "embeddings", "encoder" (no
        layer-wise decay), "heads" or "other", with a "/no_decay" suffix for the 1-D parameters.

    Raises:
        ConfigError: layerwise_lr_decay outside (0, 1], a learning rate <= 0, a negative weight decay,
            or layer-wise decay on an encoder whose layers cannot be found.

    Example:
        >>> import transformers
        >>> from hfmtl import MultiTaskConfig, MultiTaskModel
        >>> config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                                  intermediate_size=64, vocab_size=100)
        >>> head = {"type": "classification", "num_labels": 2, "id2label": {0: "no", 1: "yes"}}
        >>> model = MultiTaskModel(MultiTaskConfig(encoder=config, tasks={"rte": head}))
        >>> groups = build_param_groups(model, learning_rate=2e-5, weight_decay=0.01, head_learning_rate=1e-3)
        >>> [(g["name"], g["lr"], g["weight_decay"]) for g in groups]  # doctest: +NORMALIZE_WHITESPACE
        [('encoder', 2e-05, 0.01), ('encoder/no_decay', 2e-05, 0.0),
         ('heads', 0.001, 0.01), ('heads/no_decay', 0.001, 0.0)]
    """
    for key, value in (("learning_rate", learning_rate), ("head_learning_rate", head_learning_rate)):
        if value is not None and not value > 0:
            raise ConfigError(f"{key}={value!r} must be > 0")
    if not weight_decay >= 0:
        raise ConfigError(f"weight_decay={weight_decay!r} must be >= 0")
    if layerwise_lr_decay is None:
        sections = [("encoder", learning_rate, list(model.encoder.parameters()))]
    else:
        if not 0 < layerwise_lr_decay <= 1:
            raise ConfigError(f"layerwise_lr_decay={layerwise_lr_decay!r} must be in (0, 1]; 1 means no decay")
        groups = encoder_layer_groups(model.encoder)
        top = len(groups) - 1
        sections = [
            (_group_name(i), learning_rate * layerwise_lr_decay ** (top - i), groups[i]) for i in range(top, -1, -1)
        ]
    head_params = list(model.heads.parameters())
    sections.append(("heads", learning_rate if head_learning_rate is None else head_learning_rate, head_params))
    seen = {id(p) for _, _, params in sections for p in params}
    sections.append(("other", learning_rate, [p for p in model.parameters() if id(p) not in seen]))

    param_groups = []
    for name, lr, params in sections:
        trainable = [p for p in params if p.requires_grad]
        for suffix, decay, members in (
            ("", weight_decay, [p for p in trainable if p.ndim >= 2]),
            ("/no_decay", 0.0, [p for p in trainable if p.ndim < 2]),
        ):
            if members:
                param_groups.append({"params": members, "lr": lr, "weight_decay": decay, "name": name + suffix})
    return param_groups


class GradualUnfreezer:
    """ULMFiT-style gradual unfreezing of the encoder, from the top layer down, by dropping gradients.

    At optimizer step s (0-based: the number of steps already taken, the trainer's ``global_step``
    before it is incremented) the top ``s // every_steps`` layer groups train, plus the heads: steps
    0 .. every_steps - 1 train the heads alone (ULMFiT's first stage, the classifier being its last
    layer group), then layer L joins, then L - 1, ..., layer 1, and the embeddings group last. From
    step ``(L + 1) * every_steps`` on, everything trains. The schedule is a function of the step
    alone, so a resumed run needs no extra state.

    Why drop gradients instead of toggling ``requires_grad``: DDP records which parameters need a
    gradient when the model is wrapped and reduces them in fixed buckets; changing that afterwards
    breaks gradient synchronisation. So every parameter keeps its ``requires_grad`` and
    `drop_frozen_grads` sets ``grad = None`` on the still-frozen groups after backward (and the
    all-reduce), before clipping and ``optimizer.step()``. torch's optimizers skip a parameter whose
    grad is None: no update, no weight decay, no Adam state until it is unfrozen (its moments then
    start fresh). The cost: backward still computes (and DDP still reduces) the gradients of the frozen
    groups, so a step costs as much as full fine-tuning; `freeze_encoder_parts` is the cheaper option
    for what stays frozen for the whole run. Parameters frozen statically (``requires_grad=False``,
    by the user or by PEFT) are never touched and stay frozen.

    Args:
        model: a `MultiTaskModel` (unwrapped; the parameters are the same objects inside DDP).
        every_steps: optimizer steps between two unfreezings (>= 1).

    Raises:
        ConfigError: every_steps < 1, or the layers of the encoder cannot be found.

    Example:
        >>> import transformers
        >>> from hfmtl import MultiTaskConfig, MultiTaskModel
        >>> config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                                  intermediate_size=64, vocab_size=100)
        >>> head = {"type": "classification", "num_labels": 2, "id2label": {0: "no", 1: "yes"}}
        >>> model = MultiTaskModel(MultiTaskConfig(encoder=config, tasks={"rte": head}))
        >>> unfreezer = GradualUnfreezer(model, every_steps=100)
        >>> [unfreezer.frozen_groups(step) for step in (0, 99, 100, 200, 300)]
        [3, 3, 2, 1, 0]
        >>> unfreezer.describe(150)
        'trainable: heads, layer_2; frozen: layer_1, embeddings'

        In the training step, with Accelerate::

            accelerator.backward(loss)
            if accelerator.sync_gradients:
                unfreezer.drop_frozen_grads(global_step)
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
    """

    def __init__(self, model: nn.Module, every_steps: int):
        if not isinstance(every_steps, int) or every_steps < 1:
            raise ConfigError(f"every_steps={every_steps!r} must be an integer >= 1")
        self.every_steps = every_steps
        groups = encoder_layer_groups(model.encoder)
        # top down: the order of unfreezing
        self._groups = [(_group_name(i), groups[i]) for i in range(len(groups) - 1, -1, -1)]

    @property
    def num_groups(self) -> int:
        """L + 1: the layer groups to unfreeze, embeddings included."""
        return len(self._groups)

    @property
    def fully_unfrozen_step(self) -> int:
        """The first step at which nothing is frozen any more."""
        return self.num_groups * self.every_steps

    def frozen_groups(self, step: int) -> int:
        """How many layer groups (from the bottom, embeddings first) are still frozen at `step`."""
        return self.num_groups - min(step // self.every_steps, self.num_groups)

    def describe(self, step: int) -> str:
        """One line for the log: which groups train and which are frozen at `step`."""
        unfrozen = self.num_groups - self.frozen_groups(step)
        trainable = ["heads"] + [name for name, _ in self._groups[:unfrozen]]
        frozen = [name for name, _ in self._groups[unfrozen:]]
        return f"trainable: {', '.join(trainable)}; frozen: {', '.join(frozen) or 'none'}"

    def drop_frozen_grads(self, step: int) -> None:
        """Set ``grad = None`` on the parameters of the groups still frozen at `step`.

        Call it once per optimizer step after the last backward of the accumulation window (when
        ``accelerator.sync_gradients``), before gradient clipping and ``optimizer.step()``: clipping
        then measures the norm of the trainable gradients only.
        """
        unfrozen = self.num_groups - self.frozen_groups(step)
        for _, params in self._groups[unfrozen:]:
            for param in params:
                param.grad = None
