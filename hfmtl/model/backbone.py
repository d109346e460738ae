"""The pretrained encoder (backbone) under the heads: how it is built, loaded, and compared.

Example:
    >>> import transformers
    >>> encoder_kwargs(transformers.BertConfig())
    {'add_pooling_layer': False}
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedConfig
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from ..errors import ConfigError

# the encoder-config fields that must agree for weights to be interchangeable
_SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "dim")


def check_model_path(name: str, key: str) -> str:
    """`name` as the loaders should take it: a local directory (``~`` expanded) or a Hub id.

    A name that looks like a path (it starts with ``.``, ``/`` or ``~``, or holds a path separator and is
    no valid Hub id) and does not exist is an error here, before transformers would report it as a
    malformed Hub repo id; a valid Hub id that is not a local directory goes to the Hub as it is.

    Args:
        name: the value of `key` (``model.name_or_path``, ``model.init_from``, a model to predict with...).
        key: what the user set, for the error.

    Raises:
        ConfigError: the path does not exist, is a file, or `name` is neither a directory nor a Hub id.

    Example:
        >>> check_model_path("sentence-transformers/all-MiniLM-L6-v2", "model.name_or_path")
        'sentence-transformers/all-MiniLM-L6-v2'
        >>> check_model_path("./outputs/none", "model.init_from")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hfmtl.errors.ConfigError: model.init_from='./outputs/none': the directory '...outputs/none' does not exist ...
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    path = Path(name).expanduser()
    if path.is_dir():
        return str(path) if name.startswith("~") else name  # as written: it is saved in the config
    if path.exists():
        raise ConfigError(f"{key}={name!r} is a file; give the directory a model was saved into (or a Hub id)")
    try:
        validate_repo_id(name)
        return name
    except HFValidationError:
        pass
    separators = {os.sep, os.altsep or os.sep, "\\"}
    if name.startswith((".", "/", "~")) or any(sep in name for sep in separators):
        where = "" if path.is_absolute() else f" (relative paths are read from the current directory {os.getcwd()!r})"
        raise ConfigError(f"{key}={name!r}: the directory {str(path.absolute())!r} does not exist{where}")
    raise ConfigError(
        f"{key}={name!r} is not a Hub model id ('name' or 'org/name'), and the directory {str(path.absolute())!r} "
        "does not exist"
    )


def portable_reference(name: str) -> str:
    """`name` as a saved model records it, to resolve from any current directory: the absolute path of a
    local directory, else the Hub id as given (`check_model_path` decides which it is).

    Example:
        >>> portable_reference("sentence-transformers/all-MiniLM-L6-v2")
        'sentence-transformers/all-MiniLM-L6-v2'
        >>> portable_reference(".") == str(Path.cwd().resolve())
        True
    """
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


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


# Config attributes that hold the number of transformer layers, in the order they are tried
# (transformers' attribute_map already maps DistilBERT's n_layers to num_hidden_layers; the others
# cover configs without one).
_NUM_LAYERS_ATTRIBUTES = ("num_hidden_layers", "n_layers", "num_layers", "n_layer")
_LAYER_OPTIONS = "freezing the embeddings or bottom layers, layer-wise lr decay and gradual unfreezing"


def encoder_type(encoder: nn.Module) -> str:
    """The encoder's model type (e.g. 'bert'), or its class name when it has no config."""
    config = getattr(encoder, "config", None)
    return str(getattr(config, "model_type", None) or type(encoder).__name__)


def _num_layers(encoder: nn.Module) -> int | None:
    config = getattr(encoder, "config", None)  # a PeftModel forwards `config` to the model it wraps
    for name in _NUM_LAYERS_ATTRIBUTES:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def find_encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The `nn.ModuleList` of the encoder's transformer layers (bottom to top)."""
    num_layers = _num_layers(encoder)
    candidates: list[nn.ModuleList] = []
    inside: set[int] = set()  # modules under an earlier candidate: a list nested in a layer is no layer list
    for module in encoder.modules():  # pre-order: an outer list comes before the lists inside it
        if id(module) in inside:
            continue
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            candidates.append(module)
            inside.update(id(m) for m in module.modules())
    if not candidates:
        found = (
            f"no nn.ModuleList of num_hidden_layers={num_layers} modules"
            if num_layers
            else "no layer count in its config"
        )
        raise ConfigError(
            f"cannot find the transformer layers of encoder type {encoder_type(encoder)!r} ({found}); "
            f"{_LAYER_OPTIONS} need them: turn those options off for this encoder"
        )
    # Two separate lists of L modules (say, layers and per-layer norms): the layers hold most weights.
    return max(candidates, key=lambda layers: sum(p.numel() for p in layers.parameters()))


def encoder_layer_groups(encoder: nn.Module) -> list[list[nn.Parameter]]:
    """The encoder's parameters cut into L + 1 groups: embeddings and the rest, then layer 1..L.

    Group 0 holds the embeddings and every encoder parameter that is not inside a transformer layer:
    DeBERTa-v2's relative position embeddings and their LayerNorm (used by every layer, so they go
    with the bottom), ELECTRA's embedding projection, a pooler when the encoder has one (MultiTaskModel
    builds encoders without it), prompt-tuning parameters of PEFT. Groups 1..L are the layers from
    bottom to top, each with whatever sits inside it (LoRA A/B matrices included). Every parameter is
    in exactly one group, frozen ones too; a parameter shared by several layers goes with the lowest.

    The layers are the `nn.ModuleList` whose length is the config's number of layers
    (``num_hidden_layers``; DistilBERT's ``n_layers``), found by module identity, so it works through
    a PEFT wrapper.

    Args:
        encoder: a transformers encoder, or a PEFT model wrapping one.

    Returns:
        L + 1 lists of parameters, in ``encoder.parameters()`` order within each group.

    Raises:
        ConfigError: the encoder has no such layer list (e.g. ALBERT, whose layers are shared).

    Example:
        >>> import transformers
        >>> config = transformers.DistilBertConfig(vocab_size=100, dim=32, n_layers=3, n_heads=2, hidden_dim=64)
        >>> len(encoder_layer_groups(transformers.AutoModel.from_config(config)))
        4
    """
    layers = find_encoder_layers(encoder)
    owner: dict[int, int] = {}
    for index, layer in enumerate(layers, start=1):
        for param in layer.parameters():
            owner.setdefault(id(param), index)
    groups: list[list[nn.Parameter]] = [[] for _ in range(len(layers) + 1)]
    for param in encoder.parameters():  # deduplicated: a tied parameter is listed once
        groups[owner.get(id(param), 0)].append(param)
    return groups


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """``train.gradient_checkpointing``: recompute the encoder's activations in backward.

    Non-reentrant checkpointing (``use_reentrant=False``), which needs no input that requires grad, so it
    also works under frozen embeddings and PEFT adapters.

    Raises:
        ConfigError: the encoder's transformers class does not support gradient checkpointing.
    """
    encoder = getattr(model, "encoder", model)
    base = getattr(encoder, "get_base_model", lambda: encoder)()  # under a PEFT wrapper: the encoder itself
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"train.gradient_checkpointing: {type(base).__name__} does not support gradient checkpointing; "
            "set it to false"
        )
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
