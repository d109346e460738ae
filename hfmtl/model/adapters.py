"""PEFT adapters on the shared encoder: one adapter for all tasks, or one per task.

PEFT wraps the encoder only (`model.encoder` becomes a `peft.PeftModel`), so the task heads, which live
outside it in `model.heads`, always train in full and are always saved (PEFT's `get_peft_model` on the
whole model would freeze them). Any PEFT config is passed straight through `peft.get_peft_config`:

- tuner methods (LoRA, AdaLoRA, IA3, LoHa, LoKr, ...) in either mode:
  ``shared`` (one adapter, named ``default``) or ``per_task`` (one adapter per task, named after the
  task, switched by the task of each forward pass);
- prompt methods (PROMPT_TUNING, P_TUNING, PREFIX_TUNING) in ``shared`` mode: the virtual tokens that
  prompt and P-tuning put in front of the sequence are dropped from the encoder's output, so token
  heads still see one vector per real token.

A PEFT model is saved as adapters + heads only (a few MB): ``config.json`` (which names the base
encoder in ``peft.base_model``), ``heads.safetensors`` and ``adapters/`` (PEFT's own format, one
sub-folder per task adapter). Loading rebuilds the base encoder and re-attaches them.

Example:
    >>> add_adapters(model, {"peft_type": "LORA", "r": 8, "target_modules": ["query", "value"]},  # doctest: +SKIP
    ...              mode="per_task", base_model="../shared/models/all-MiniLM-L6-v2")
    >>> trainable, total = count_parameters(model)                                              # doctest: +SKIP
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import peft
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import cached_file

from ..errors import ConfigError
from .backbone import portable_reference

HEADS_FILE = "heads.safetensors"
ADAPTERS_DIR = "adapters"
SHARED_ADAPTER = "default"


def build_peft_config(config: dict[str, Any], mode: str) -> peft.PeftConfig:
    """A PEFT config from its mapping, checked for use on an encoder in `mode`."""
    config = dict(config)
    known = [t.value for t in peft.PeftType]
    if str(config.get("peft_type", "")).upper() not in known:
        raise ConfigError(
            f"peft.config.peft_type={config.get('peft_type')!r} is not a PEFT method; choose one of {known}"
        )
    config["peft_type"] = str(config["peft_type"]).upper()
    try:
        peft_config = peft.get_peft_config(config)
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"peft.config={config!r} is not a valid PEFT config: {err}") from err
    if peft_config.is_prompt_learning:
        if mode != "shared":
            raise ConfigError(
                f"peft.mode={mode!r}: prompt methods ({_method(peft_config)}) run in mode 'shared'; "
                "per-task adapters need a tuner method such as LORA or IA3"
            )
        # the encoder-only PEFT class, which prepends the virtual tokens (the base class would ignore them)
        peft_config.task_type = peft.TaskType.FEATURE_EXTRACTION
    return peft_config


def _method(peft_config: peft.PeftConfig) -> str:
    return str(getattr(peft_config.peft_type, "value", peft_config.peft_type))


def add_adapters(model: nn.Module, config: dict[str, Any], mode: str, base_model: str, total_steps: int = 0) -> None:
    """Wrap `model.encoder` with PEFT adapters, in place.

    Args:
        model: a `MultiTaskModel` with a plain encoder.
        config: the PEFT config as a mapping (``peft_type`` and the method's fields).
        mode: 'shared' (one adapter) or 'per_task' (one adapter per task, named after it).
        base_model: where the encoder's weights come from (Hub id or directory, an hfmtl model
            directory included); recorded so that a saved model can re-attach its adapters: a directory
            as its absolute path, so that the model loads from any current directory.
        total_steps: the training's optimizer steps; fills AdaLoRA's ``total_step`` when not given.
    """
    if is_peft_model(model):
        raise ConfigError("the model already has PEFT adapters; merge them first (hfmtl export) or drop peft")
    config = dict(config)
    if str(config.get("peft_type", "")).upper() == "ADALORA" and not config.get("total_step"):
        if not total_steps:
            raise ConfigError("peft.config: AdaLoRA needs total_step (or set train.max_steps, which fills it in)")
        config["total_step"] = total_steps
    peft_config = build_peft_config(config, mode)
    names = [SHARED_ADAPTER] if mode == "shared" else list(model.config.tasks)
    try:
        encoder = peft.get_peft_model(model.encoder, peft_config, adapter_name=names[0])
        for name in names[1:]:
            encoder.add_adapter(name, copy.deepcopy(peft_config))
    except (ValueError, TypeError) as err:  # e.g. target_modules that match nothing in this encoder
        raise ConfigError(
            f"peft.config cannot be applied to this {model.config.encoder.model_type} encoder: {err}"
        ) from err
    if len(names) > 1:
        # PEFT leaves only the active adapter trainable; here every adapter trains, on its own task's steps.
        # PEFT's own switch, not "every parameter the base encoder lacks": that would also unfreeze
        # weights PEFT keeps fixed (AdaLoRA's ranknum), which then drift and are not saved.
        encoder.set_requires_grad(names, requires_grad=True)
    model.encoder = encoder
    model.config.peft = {"mode": mode, "base_model": portable_reference(base_model), "adapters": names}


def missing_base_error(err: ConfigError, base_model: str, path: str) -> ConfigError:
    """The error for a saved adapter model whose base encoder cannot be loaded: what failed, and how to
    point the model at where its base encoder is now."""
    return ConfigError(
        f"{str(err).rstrip('.')}; the adapters saved in {path!r} need their base encoder {base_model!r}: give its "
        "location now with base_model=... (MultiTaskModel.from_pretrained, hfmtl.Predictor.from_pretrained) or "
        "--base-model (hfmtl predict)"
    )


def is_peft_model(model: nn.Module) -> bool:
    return isinstance(getattr(model, "encoder", None), peft.PeftModel)


def num_virtual_tokens(model: nn.Module) -> int:
    """How many virtual tokens a prompt method prepends to the encoder's output (0 otherwise)."""
    if not is_peft_model(model):
        return 0
    config = model.encoder.active_peft_config
    if config.peft_type in (peft.PeftType.PROMPT_TUNING, peft.PeftType.P_TUNING):
        return int(config.num_virtual_tokens)
    return 0


def activate_adapter(model: nn.Module, task_name: str) -> None:
    """Route the next forward pass through `task_name`'s adapter (per-task mode)."""
    encoder = model.encoder
    if encoder.active_adapter != task_name:
        encoder.set_adapter(task_name)
        model._hfmtl_adapters_frozen = True
    if model.training and getattr(model, "_hfmtl_adapters_frozen", False):
        # set_adapter marks the other adapters frozen; keep them trainable, or an optimizer (and DDP,
        # which registers parameters once) would never see them again after their first switch. A
        # switch made in eval mode (an evaluation between training steps) froze them too, and the next
        # training step may be on that same task: hence the flag, not "on a switch" (and not on every
        # step either: set_requires_grad walks every adapter parameter).
        encoder.set_requires_grad(model.config.peft["adapters"], requires_grad=True)
        model._hfmtl_adapters_frozen = False


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def update_adalora_budget(model: nn.Module, global_step: int) -> None:
    """AdaLoRA re-allocates ranks from the current gradients: call after backward, before zero_grad."""
    if is_peft_model(model) and model.encoder.active_peft_config.peft_type == peft.PeftType.ADALORA:
        model.encoder.base_model.update_and_allocate(global_step)


# --- saving and loading -------------------------------------------------------------------------


def save_adapters_and_heads(model: nn.Module, directory: str | Path) -> None:
    """Write config.json, heads.safetensors and adapters/ (PEFT's format) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    heads = {k: v.detach().contiguous().cpu() for k, v in model.heads.state_dict().items()}
    save_file(heads, str(directory / HEADS_FILE), metadata={"format": "pt"})
    model.encoder.save_pretrained(str(directory / ADAPTERS_DIR))


def load_adapters_and_heads(model: nn.Module, path: str, **hub_kwargs: Any) -> None:
    """Attach the adapters and load the heads saved by `save_adapters_and_heads` (local or Hub `path`)."""
    info = model.config.peft
    names = info["adapters"]
    mode = info["mode"]
    encoder = model.encoder
    for index, name in enumerate(names):
        subfolder = ADAPTERS_DIR if name == SHARED_ADAPTER else f"{ADAPTERS_DIR}/{name}"
        if index == 0:
            encoder = peft.PeftModel.from_pretrained(
                encoder, path, adapter_name=name, subfolder=subfolder, **hub_kwargs
            )
        else:
            encoder.load_adapter(path, adapter_name=name, subfolder=subfolder, **hub_kwargs)
    if mode == "per_task":
        encoder.set_adapter(names[0])
    model.encoder = encoder
    heads_file = cached_file(path, HEADS_FILE, **hub_kwargs)
    model.heads.load_state_dict(load_file(heads_file))


def load_weights_into(model: nn.Module, directory: str | Path) -> None:
    """Load weights saved by `save_adapters_and_heads` into a model that already has the same adapters."""
    directory = Path(directory)
    model.heads.load_state_dict(load_file(str(directory / HEADS_FILE)))
    for name in model.config.peft["adapters"]:
        folder = directory / ADAPTERS_DIR if name == SHARED_ADAPTER else directory / ADAPTERS_DIR / name
        weights = load_file(str(folder / "adapter_model.safetensors"))
        result = peft.set_peft_model_state_dict(model.encoder, weights, adapter_name=name)
        if result.unexpected_keys:
            raise ConfigError(f"adapter {name!r} in {folder} does not fit this model: {result.unexpected_keys[:3]}")


def merged_encoder(model: nn.Module, task_name: str | None = None) -> nn.Module:
    """The encoder with its adapter folded into the weights (the model's encoder is consumed).

    Args:
        model: a `MultiTaskModel` (with or without adapters).
        task_name: in per-task mode, whose adapter to merge; the others are dropped.
    """
    if not is_peft_model(model):
        return model.encoder
    encoder = model.encoder
    if encoder.active_peft_config.is_prompt_learning:
        raise ConfigError(
            f"{_method(encoder.active_peft_config)} adds virtual tokens that cannot be folded into the weights"
        )
    mode = model.config.peft["mode"]
    if mode == "per_task":
        if task_name is None:
            raise ConfigError("per-task adapters merge one task at a time: name the task")
        if task_name not in model.config.peft["adapters"]:
            raise ConfigError(f"no adapter for task {task_name!r}; adapters: {model.config.peft['adapters']}")
        encoder.set_adapter(task_name)
        return encoder.merge_and_unload(adapter_names=[task_name])
    return encoder.merge_and_unload()


def routes_rows(model: nn.Module) -> bool:
    """Whether one batch can send each row through its own adapter: PEFT's per-row ``adapter_names``,
    which plain LoRA reads; DoRA refuses it, and other tuners (IA3, AdaLoRA's SVD layers...) ignore it,
    running every row through one adapter."""
    if not is_peft_model(model) or type(model.encoder.base_model) is not peft.LoraModel:
        return False
    return not any(getattr(config, "use_dora", False) for config in model.encoder.peft_config.values())


def mixed_adapter_names(model: nn.Module, task_names: list[str]) -> dict[str, Any]:
    """Encoder kwargs that route row i through task_names[i]'s adapter (per-task mode, eval only).

    Raises:
        ValueError: the rows name several adapters of a tuner that cannot route rows (`routes_rows`).
    """
    if not is_peft_model(model) or model.config.peft["mode"] != "per_task":
        return {}
    if not routes_rows(model):
        if len(set(task_names)) > 1:
            method = _method(model.encoder.active_peft_config)
            raise ValueError(f"per-task {method} adapters cannot share a batch (only plain LoRA routes rows)")
        activate_adapter(model, task_names[0])
        return {}
    if model.training:
        raise ValueError("a batch mixing per-task adapters runs in eval mode only (PEFT's adapter_names)")
    return {"adapter_names": list(task_names)}
