"""Loading a saved model's weights into a model that already exists (the best model at the end of a run,
the final model a resume takes over): plain, sharded (FSDP2's DTensor parameters), compiled, or with
tied parameters.

The loading itself is torch's `set_model_state_dict` with a full state dict: each process reads the
whole file and keeps what its parameters hold (a plain parameter all of it, a DTensor its shard), and
torch.compile's ``_orig_mod.`` names are matched to the plain ones. A plain ``load_state_dict`` copies
a whole tensor into a sharded parameter and stops ("got mixed torch.Tensor and DTensor").

What is checked here, before anything is loaded: `save_pretrained` writes a parameter shared by several
modules once, under one of its names -- BART's and T5's token embeddings (``shared``,
``encoder.embed_tokens``, ``decoder.embed_tokens``) are one tensor, saved as ``encoder.shared.weight``
only. A missing name is accepted exactly when its parameter is the same tensor as one the file holds;
anything else that does not match is an error that names it (`set_model_state_dict` with a full state
dict would keep such a parameter's current values without a word).

Example:
    >>> load_saved_weights(model, "outputs/glue/best")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from ..errors import HfmtlError

WEIGHTS_NAME = "model.safetensors"
_COMPILED = "_orig_mod."  # torch.compile's wrapper, in the names of a module compiled in place


def load_saved_weights(model: nn.Module, directory: str | os.PathLike) -> None:
    """Load ``<directory>/model.safetensors`` into `model` in place. Under FSDP, call on every process
    (each takes its shard: a collective).

    Raises:
        HfmtlError: the file holds names the model does not have, or lacks a parameter that is not tied
            to one it holds; the message names the first of them. Nothing is loaded then.
    """
    path = Path(directory) / WEIGHTS_NAME
    state = load_file(str(path))
    _check_names(model, state, path)
    load_full_state_dict(model, state)


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (unsharded) state dict into `model`, whose parameters may be sharded; names the
    model has and `state` lacks keep their values (`load_saved_weights` checks the names first)."""
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def _check_names(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = [_plain(name) for name in model.state_dict()]
    tensors = {
        _plain(name): tensor
        for name, tensor in [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ]
    }
    loaded = {id(tensors[name]) for name in state if name in tensors}
    untied = [
        name for name in expected if name not in state and (name not in tensors or id(tensors[name]) not in loaded)
    ]
    known = set(expected)
    unexpected = [name for name in state if name not in known]
    if untied or unexpected:
        what = [f"{len(untied)} missing (e.g. {untied[0]!r})"] if untied else []
        what += [f"{len(unexpected)} unknown (e.g. {unexpected[0]!r})"] if unexpected else []
        raise HfmtlError(
            f"{path} does not hold this model's weights: {' and '.join(what)} parameter names; it was saved "
            "from another model (another encoder or other tasks)"
        )


def _plain(name: str) -> str:
    return name.replace(_COMPILED, "")
