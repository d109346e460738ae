"""Start a model from an earlier one: ``model.init_from`` (and the base encoder of saved adapters).

The source is an hfmtl model directory (or Hub repo) or any Hugging Face model. Its encoder weights
replace the new model's; from an hfmtl source, heads of tasks with the same name, type, shape and labels
are kept too, and the others start fresh (the log says which and why). Sources whose encoder is a
different architecture, or heads the user asked to keep that cannot be kept, are errors.

Example:
    >>> model = MultiTaskModel.from_encoder("../shared/models/all-MiniLM-L6-v2", specs)  # doctest: +SKIP
    >>> initialize_from(model, "outputs/intermediate", keep_heads="auto")             # doctest: +SKIP
    {'encoder': 'outputs/intermediate', 'heads_loaded': ['rte'], 'heads_fresh': {}}
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ..errors import ConfigError
from .backbone import check_same_architecture
from .modeling import load_encoder

logger = logging.getLogger("hfmtl")


@dataclass
class SourceWeights:
    """What a source checkpoint offers: a plain encoder and, from an hfmtl model, its heads."""

    encoder: PreTrainedModel
    head_specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    head_states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def load_source(source: str, revision: str | None = None, key: str = "model.init_from") -> SourceWeights:
    """Load `source` (an hfmtl model or any HF model) as a plain encoder plus its heads, if any.

    An hfmtl source with one shared adapter gives its merged encoder; per-task adapters cannot be
    turned into one encoder, so such a source is refused.
    """
    encoder, hfmtl_model = load_encoder(source, revision=revision, key=key)
    if hfmtl_model is None:
        return SourceWeights(encoder)
    heads = {
        name: {k: v.detach().clone() for k, v in head.state_dict().items()} for name, head in hfmtl_model.heads.items()
    }
    return SourceWeights(encoder, dict(hfmtl_model.config.tasks), heads)


def initialize_from(model: nn.Module, source: str, keep_heads: str | list[str] = "auto", revision: str | None = None):
    """Copy `source`'s encoder (and matching heads) into `model` in place; returns a report dict.

    Args:
        model: a `MultiTaskModel` with a plain (not yet PEFT-wrapped) encoder.
        source: an hfmtl model directory / Hub repo, or any HF model.
        keep_heads: 'auto' (every head that matches), 'none', or a list of task names that must be kept.
        revision: Hub revision of `source`.
    """
    weights = load_source(source, revision)
    check_same_architecture(model.config.encoder, weights.encoder.config, "model.init_from", source)
    result = model.encoder.load_state_dict(weights.encoder.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"model.init_from={source!r}: encoder weights do not fit (missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]})"
        )
    required = [] if isinstance(keep_heads, str) else list(keep_heads)
    for name in required:
        if name not in model.heads:
            raise ConfigError(f"model.init_heads names {name!r}, which is not a task of this run")
    loaded, fresh = [], {}
    for name, head in model.heads.items():
        if keep_heads == "none" or (required and name not in required):
            fresh[name] = "not asked to keep it"
            continue
        reason = _head_mismatch(model.config.tasks[name], head, weights, name)
        if reason is None:
            head.load_state_dict(weights.head_states[name])
            loaded.append(name)
        elif name in required:
            raise ConfigError(f"model.init_heads asks to keep the head of {name!r}, but {reason}")
        else:
            fresh[name] = reason
    logger.info(
        "init_from %s: encoder loaded; heads kept: %s; fresh heads: %s", source, loaded or "none", fresh or "none"
    )
    return {"encoder": source, "heads_loaded": loaded, "heads_fresh": fresh}


def _head_mismatch(spec: dict[str, Any], head: nn.Module, weights: SourceWeights, name: str) -> str | None:
    """Why `name`'s head cannot be taken from the source (None: it can)."""
    if name not in weights.head_specs:
        return "the source has no task of that name"
    theirs = weights.head_specs[name]
    for field_name in ("type", "num_labels", "id2label", "problem_type"):
        if spec.get(field_name) != theirs.get(field_name):
            return f"its {field_name} differs ({theirs.get(field_name)!r} in the source, {spec.get(field_name)!r} here)"
    state = weights.head_states[name]
    for key, tensor in head.state_dict().items():
        if key not in state or state[key].shape != tensor.shape:
            return f"its weight {key} has another shape in the source"
    return None
