"""The pretrained encoder (backbone) under the heads: how it is built, loaded, and compared.

Example:
    >>> import transformers
    >>> encoder_kwargs(transformers.BertConfig())
    {'add_pooling_layer': False}
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers import PreTrainedConfig
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from ..errors import ConfigError

# the encoder-config fields that must agree for weights to be interchangeable
_SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "dim")


def encoder_kwargs(encoder_config: PreTrainedConfig) -> dict[str, Any]:
    """Build the encoder without its pooler where it has one: no head here uses it, and under DDP an
    unused parameter would cost a graph walk every step (`find_unused_parameters`)."""
    model_class = MODEL_MAPPING.get(type(encoder_config), None)
    if model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        return {"add_pooling_layer": False}
    return {}


def check_same_architecture(target: Any, source: Any, key: str, source_name: str) -> None:
    """Raise a ConfigError when two encoder configs differ in a field that shapes the weights."""
    for name in _SHAPE_FIELDS:
        ours, theirs = getattr(target, name, None), getattr(source, name, None)
        if ours != theirs:
            raise ConfigError(
                f"{key}={source_name!r} has a {source.model_type} encoder with {name}={theirs}, but the model "
                f"is a {target.model_type} encoder with {name}={ours}; start from a checkpoint of the same "
                "architecture (or change model.name_or_path)"
            )
