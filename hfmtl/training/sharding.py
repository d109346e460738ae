"""FSDP2: which modules of an hfmtl model become sharding units of their own, and the resume of an
optimizer whose checkpoint holds state for only some parameters.

**Wrapping.**
With ``fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP`` (configs/accelerate/fsdp.yaml) and no class list,
Accelerate 1.15 wraps every class the model names in ``_no_split_modules`` -- for a BERT encoder,
``BertLayer`` and ``BertEmbeddings`` -- and then wraps the input embedding (``word_embeddings``) once
more on its own. That second `fully_shard` meets parameters its parent unit already sharded, and
stops (in torch's device-mesh code, "value was None when it should not be"), on GPUs as on CPUs. So
the classes that hold the input embedding are left out of the list: the embedding is still its own
unit (Accelerate's), every layer is one, and the rest -- heads, pooler, norms -- goes with the root.

An explicit ``fsdp_transformer_layer_cls_to_wrap`` is the user's and is kept as it is.

**Resuming the optimizer.** AdamW creates a parameter's state at the first step that gives it a
gradient, so a checkpoint written before some task was drawn holds no state for that task's head.
Accelerate loads an FSDP2 optimizer through torch's `get_optimizer_state_dict`, which first gives every
parameter a state (one optimizer step with zero gradients), then asks the checkpoint for all of them:
``Missing key in checkpoint state_dict: optimizer.state.heads.rte.dense.weight.step``. Had it loaded,
the invented state (a step count of 1) would make the resumed run differ from the uninterrupted one.
`optimizer_state_from` therefore gives the optimizer, before the load, a placeholder state for exactly
the parameters the checkpoint holds state for (read from its metadata), so the load asks for those
only and overwrites each placeholder; the other parameters are hidden from torch's check that every
trainable parameter has saved state (marked frozen for the load only), and stay without state, as in
the run that wrote the checkpoint. DDP and a single process load the optimizer with its own
`load_state_dict`, which needs none of this.

Example:
    >>> plan_fsdp_wrapping(accelerator, model)  # before accelerator.prepare  # doctest: +SKIP
    >>> with optimizer_state_from(accelerator, model, optimizer, checkpoint):  # doctest: +SKIP
    ...     accelerator.load_state(checkpoint)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils.constants import OPTIMIZER_NAME
from torch import nn

logger = logging.getLogger("hfmtl")


def plan_fsdp_wrapping(accelerator: Accelerator, model: nn.Module) -> None:
    """Under FSDP2 with transformer-based wrapping and no class list of the user's, set the plugin's list
    to the model's no-split classes less those holding the input embedding. Call before `prepare`."""
    if not getattr(accelerator, "is_fsdp2", False):
        return
    plugin = accelerator.state.fsdp_plugin
    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    if getattr(policy, "__name__", "") != "transformer_auto_wrap_policy" or plugin.transformer_cls_names_to_wrap:
        return
    no_split = set(getattr(model, "_no_split_modules", None) or [])
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    holders = {
        type(module).__name__
        for module in model.modules()
        if embedding is not None and module is not embedding and any(m is embedding for m in module.modules())
    }
    plugin.transformer_cls_names_to_wrap = sorted(no_split - holders)
    logger.info("FSDP2 wraps %s (and the input embedding) as units of their own", plugin.transformer_cls_names_to_wrap)


@contextmanager
def optimizer_state_from(accelerator: Accelerator, model: nn.Module, optimizer, checkpoint: Path) -> Iterator[None]:
    """Under FSDP2, around ``accelerator.load_state(checkpoint)``: a zero placeholder state for each
    parameter that has optimizer state in `checkpoint` and none yet here, and the parameters the
    checkpoint holds no state for out of torch's check (see the module docstring). Parameters are
    matched by name (torch.compile's ``_orig_mod.`` left out); each placeholder tensor has its
    parameter's sharding when it has the parameter's shape (the moments), else the saved shape (the
    step count). Enter on every process; does nothing under other engines."""
    if not getattr(accelerator, "is_fsdp2", False):
        yield
        return
    saved = _saved_optimizer_state(checkpoint)
    params = {name.replace("_orig_mod.", ""): param for name, param in model.named_parameters()}
    state = getattr(optimizer, "optimizer", optimizer).state  # Accelerate's wrapper, or the optimizer
    for name, entries in saved.items():
        param = params.get(name)
        if param is not None and not state.get(param):
            state[param] = {
                key: torch.zeros_like(param, dtype=dtype) if shape == param.shape else torch.zeros(shape, dtype=dtype)
                for key, (shape, dtype) in entries.items()
            }
    # torch's loader wants saved state for every parameter that requires a gradient: those without any
    # (a head not trained yet) are taken out of its view for the load only, and stay without state
    stateless = [param for name, param in params.items() if param.requires_grad and name not in saved]
    for param in stateless:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in stateless:
            param.requires_grad_(True)


def _saved_optimizer_state(checkpoint: Path) -> dict[str, dict[str, tuple[torch.Size, torch.dtype]]]:
    """parameter name -> {state key: (shape, dtype)} of the optimizer state in `checkpoint`: from the
    metadata of a sharded (DCP) optimizer, or from a full one's file."""
    import torch.distributed.checkpoint as dcp

    sharded, full = checkpoint / f"{OPTIMIZER_NAME}_0", checkpoint / f"{OPTIMIZER_NAME}.bin"
    found: dict[str, dict[str, tuple[torch.Size, torch.dtype]]] = {}
    if sharded.is_dir():
        prefix = "optimizer.state."
        for key, meta in dcp.FileSystemReader(str(sharded)).read_metadata().state_dict_metadata.items():
            if key.startswith(prefix) and hasattr(meta, "size"):
                name, entry = key[len(prefix) :].rsplit(".", 1)
                found.setdefault(name, {})[entry] = (meta.size, meta.properties.dtype)
    elif full.is_file():
        for name, entries in torch.load(full, weights_only=True, map_location="cpu")["state"].items():
            found[name] = {key: (value.shape, value.dtype) for key, value in entries.items() if torch.is_tensor(value)}
    return found
