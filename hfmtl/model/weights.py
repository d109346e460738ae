"""Loading a saved model's weights into a model that already exists (the best model at the end of a run,
the final model a resume takes over), tied parameters included.

`save_pretrained` writes a parameter shared by several modules once, under one of its names: BART's and
T5's token embeddings (``shared``, ``encoder.embed_tokens``, ``decoder.embed_tokens``) are one tensor, saved
as ``encoder.shared.weight`` only. A strict ``load_state_dict`` then reports the other names missing and
stops -- at the end of a run, after all its training, with no final model written. Here a missing name
is accepted exactly when its parameter is the same tensor as one that was loaded; anything else that
does not match is an error that names it.

Example:
    >>> load_saved_weights(model, "outputs/glue/best")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from ..errors import HfmtlError

WEIGHTS_NAME = "model.safetensors"


def load_saved_weights(model: nn.Module, directory: str | os.PathLike) -> None:
    """Load ``<directory>/model.safetensors`` into `model` in place.

    Raises:
        HfmtlError: the file holds names the model does not have, or lacks a parameter that is not tied
            to one it holds; the message names the first of them.
    """
    path = Path(directory) / WEIGHTS_NAME
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    loaded = {id(tensors[name]) for name in state if name in tensors}
    untied = [name for name in missing if name not in tensors or id(tensors[name]) not in loaded]
    if untied or unexpected:
        what = [f"{len(untied)} missing (e.g. {untied[0]!r})"] if untied else []
        what += [f"{len(unexpected)} unknown (e.g. {unexpected[0]!r})"] if unexpected else []
        raise HfmtlError(
            f"{path} does not hold this model's weights: {' and '.join(what)} parameter names; it was saved "
            "from another model (another encoder or other tasks)"
        )
