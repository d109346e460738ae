"""Frozen features of a task's examples from an encoder, for the transferability estimates.

`extract_features` pools the encoder's last hidden state as hfmtl's heads do (one row per example, per
labelled token, or per (example, choice) pair) and returns the labels aligned with the rows
(hfmtl/analysis/ranking.py ranks candidate source encoders on them).

Example:
    >>> data = prepare_task_data(task, tokenizer, 128, contextlib.nullcontext, train=False)  # doctest: +SKIP
    >>> feats = extract_features(model, task, data.eval_features, tokenizer)                  # doctest: +SKIP
    >>> logme(feats.features, feats.labels, regression=feats.regression)                     # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..model import adapters
from ..model.pooling import causal_position_ids, is_causal, resolve_pooling
from ..tasks import FeatureUnit, Task, Unsupported
from ..tasks.heads import pool
from ..tasks.labels import IGNORE_INDEX
from ..training.data import build_eval_loader

__all__ = ["TaskFeatures", "extract_features"]


@dataclass
class TaskFeatures:
    """Frozen features of a task's examples and the labels that go with them.

    Attributes:
        features: (N, hidden) float32: one row per example, per scored token (token classification) or
            per (example, choice) pair (multiple choice).
        labels: (N,) class ids, (N,) float targets (regression) or (N, K) multi-hot (multi-label).
        regression: whether the labels are real values.
        unit: what a row is: 'example', 'token' or 'choice'.
    """

    features: np.ndarray
    labels: np.ndarray
    regression: bool
    unit: str


def _encode_fn(model: nn.Module, task: Task):
    """(encoder, input names it takes or None for all, virtual tokens to drop) for `model`."""
    from ..model.modeling import MultiTaskModel

    if isinstance(model, MultiTaskModel):
        peft_config = model.config.peft or {}
        if peft_config.get("mode") == "per_task":
            if task.name not in peft_config["adapters"]:
                raise ConfigError(
                    f"the model has one adapter per task ({peft_config['adapters']}) and none for task "
                    f"{task.name!r}; extract features with one of those tasks, or merge/export an encoder first"
                )
            adapters.activate_adapter(model, task.name)
        return model.encoder, model.encoder_input_names, adapters.num_virtual_tokens(model)
    parameters = inspect.signature(model.forward).parameters.values()
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    return model, None if takes_any else {p.name for p in parameters}, 0


def _feature_unit(task: Task) -> FeatureUnit:
    """What a row is for this task's type (`Task.feature_unit`); a type without one is refused."""
    try:
        return type(task).feature_unit()
    except Unsupported as err:
        raise ConfigError(f"task {task.name!r} ({task.type_name}) has no transferability estimate: {err}") from None


@torch.no_grad()
def extract_features(
    model: nn.Module,
    task: Task,
    dataset: Any,
    tokenizer: Any,
    *,
    pooling: str | None = None,
    batch_size: int = 32,
    max_examples: int | None = None,
    device: torch.device | str | None = None,
) -> TaskFeatures:
    """The frozen encoder's features of a task's (tokenized) examples, with their labels.

    Sequence tasks get one pooled vector per example ('cls': the first token, 'mean': the mean over
    non-padding tokens, 'last': the last non-padding token, as `hfmtl.tasks.base.pool` does for the heads). Token classification gets the
    last hidden state of every token with a label (the first sub-token of each word in eval features,
    which `prepare_task_data` produces; train features built with ``label_all_tokens`` label every
    sub-token). Multiple choice gets one pooled vector per (example, choice), labelled 1 for the right
    choice and 0 for the others (padded choices are dropped): LogME / H-score then measure how well the
    features tell right choices from wrong ones. The task's type says which of these its rows are
    (`Task.feature_unit`); a type with none of them (question answering) is refused.

    The model runs in eval mode (no dropout) under ``torch.no_grad``; its mode is restored afterwards.

    Args:
        model: a `MultiTaskModel` (its encoder is used, its heads are not; per-task adapters: the task's
            own) or a bare encoder (`AutoModel`, or a PEFT-wrapped one).
        task: the task, set up (`prepare_task_data` calls its `setup`).
        dataset: the task's tokenized features with ``labels`` (e.g. ``TaskData.eval_features``).
        tokenizer: the tokenizer the features were made with (for padding).
        pooling: 'cls', 'mean', 'last' or 'auto' (see hfmtl/model/pooling.py); None: the model's
            ``config.pooling`` for a `MultiTaskModel`, else 'auto'.
        batch_size: examples per forward pass.
        max_examples: use the first `max_examples` examples only.
        device: where to run; default: the model's device.

    Returns:
        The features (float32 numpy) and aligned labels.

    Example:
        >>> data = prepare_task_data(task, tokenizer, 128, contextlib.nullcontext)        # doctest: +SKIP
        >>> feats = extract_features(model, task, data.eval_features, tokenizer)           # doctest: +SKIP
        >>> logme(feats.features, feats.labels, regression=feats.regression)              # doctest: +SKIP
    """
    feature_unit = _feature_unit(task)
    if "labels" not in dataset.column_names:
        raise DataError(f"task {task.name!r}: the features have no 'labels' column (columns: {dataset.column_names})")
    if max_examples is not None and max_examples < len(dataset):
        dataset = dataset.select(range(max_examples))
    if pooling is None:
        pooling = getattr(getattr(model, "config", None), "pooling", None) or "auto"
    if pooling not in ("cls", "mean", "last", "auto"):
        raise ConfigError(f"pooling={pooling!r} is not one of 'cls', 'mean', 'last', 'auto'")
    if pooling == "auto":  # a bare encoder: the choice a MultiTaskModel on it would make
        pooling = resolve_pooling(pooling, getattr(model, "config", None))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        encoder, input_names, virtual = _encode_fn(model, task)
        # a decoder counts positions over the real tokens, as MultiTaskModel does (hfmtl/model/pooling.py)
        positions = is_causal(getattr(encoder, "config", None)) and "position_ids" in (input_names or {"position_ids"})
        rows, labels = [], []
        for batch in build_eval_loader(task, dataset, tokenizer, batch_size):
            inputs = {k: v.to(device) for k, v in batch.items() if k in task.model_input_names}
            if input_names is not None:
                inputs = {k: v for k, v in inputs.items() if k in input_names}
            if feature_unit.unit == "choice":
                inputs = {k: v.flatten(0, 1) for k, v in inputs.items()}
            if positions and "attention_mask" in inputs:
                inputs["position_ids"] = causal_position_ids(inputs["attention_mask"])
            hidden = encoder(**inputs, return_dict=True).last_hidden_state[:, virtual:].float()
            target = batch["labels"]
            if feature_unit.unit == "token":
                keep = (target != IGNORE_INDEX).to(device)
                rows.append(hidden[keep].cpu())
                labels.append(target[keep.cpu()])
                continue
            pooled = pool(hidden, inputs.get("attention_mask"), pooling).cpu()
            if feature_unit.unit == "choice":
                num_choices = batch["input_ids"].shape[1]
                keep = batch["choice_mask"].flatten().bool()
                correct = torch.nn.functional.one_hot(target, num_choices).flatten()
                rows.append(pooled[keep])
                labels.append(correct[keep])
            else:
                rows.append(pooled)
                labels.append(target)
    finally:
        model.train(was_training)
    label_array = torch.cat(labels).numpy()
    return TaskFeatures(
        features=torch.cat(rows).numpy().astype(np.float32),
        labels=label_array,
        regression=feature_unit.regression,
        unit=feature_unit.unit,
    )
