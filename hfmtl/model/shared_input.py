"""One encoder pass for the tasks of an input group: every head on the same rows' hidden states.

An input group's batch (hfmtl/training/input_groups.py) carries the encoder inputs once and the labels of
each task of the group, ``labels = {task_name: targets}``. `MultiTaskModel.forward` hands such a batch
here: the rows are encoded once, and each task's head and loss read that one output. The result equals
running each task alone on the same batch (tests/test_input_groups.py), at the cost of one encoder pass
instead of one per task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..tasks import get_task_class

if TYPE_CHECKING:
    from .modeling import MultiTaskModel


def group_losses(
    model: MultiTaskModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
    labels: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Each task's loss on one encoding of the batch.

    Args:
        model: the `MultiTaskModel` (its shared encoder, or one adapter shared by every task).
        input_ids, attention_mask, token_type_ids: the rows, (batch, length).
        labels: task_name -> that task's targets for the rows.

    Raises:
        KeyError: a task has no head in the model.
        ValueError: the model has one adapter per task (its encoder differs per task), or the inputs have
            a choices dimension (multiple choice encodes each row once per choice).
    """
    for name in labels:
        if name not in model.heads:
            raise KeyError(f"unknown task {name!r}; this model has heads for {sorted(model.heads)}")
    if model.config.peft and model.config.peft["mode"] == "per_task":
        raise ValueError("with one adapter per task the encoder differs per task: tasks cannot share a pass")
    if input_ids.dim() != 2:
        raise ValueError(f"an input group's rows are (batch, length) inputs, not {tuple(input_ids.shape)}")
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    inputs = {k: v for k, v in inputs.items() if v is not None and k in model.encoder_input_names}
    hidden = model._encode(inputs)
    losses = {}
    for name, targets in labels.items():
        spec = model.config.tasks[name]
        logits = model.heads[name](hidden, inputs.get("attention_mask"))
        losses[name] = get_task_class(spec["type"]).compute_loss(spec, logits, targets)
    return losses
