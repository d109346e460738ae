"""Gradient similarity between tasks on the shared parameters.

For one batch per task, `task_gradients` computes each task's loss gradient with respect to the
parameters the tasks share (the encoder's trainable ones: all of them in full fine-tuning, only the
adapters under PEFT), flattened into one vector per task; `gradient_cosine_matrix` gives their pairwise
cosines (T x T). A negative cosine means a step on one task increases the other's loss to first order
(the "conflicting gradients" of Yu et al. 2020, PCGrad); the matrix over training shows which tasks pull
together. `GradientSimilarityTracker` records it at the steps a trainer asks for and saves JSON.

Why `torch.autograd.grad` and not ``backward``: the gradients never touch ``.grad``, so calling this in
the middle of training (even between accumulation micro-steps) leaves the optimizer's gradients as
they were. The computation runs in eval mode (no dropout): the measure is deterministic and draws
nothing from the RNG, so the training's dropout masks, and an exact resume, are unaffected.

Memory: one flattened gradient per task, on the parameters' device (T x P floats: for a 110M-parameter
encoder and 4 tasks, ~1.8 GB in fp32; under LoRA, a few MB), plus one backward graph at a time.

Distributed training (an assumption the trainer must honour): the model is used unwrapped (a DDP
wrapper is removed here, as ``accelerator.unwrap_model`` would): DDP's forward broadcasts buffers, a
collective that would hang a call made on one process only, and its reducer is left alone. So no
collective runs: each process measures the gradients of ITS OWN batches (not the all-reduced ones);
calling the tracker on the main process only is enough (and cheapest), and calling it on every process
gives each its local matrix (only the main process should save). Sharded parameters (FSDP, DeepSpeed
ZeRO-3) are not supported. Under mixed precision, call it inside ``accelerator.autocast()`` to measure
what training computes.

Example:
    >>> grads = task_gradients(model, {"rte": rte_batch, "mnli": mnli_batch})   # doctest: +SKIP
    >>> names, cos = gradient_cosine_matrix(grads)                                  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..files import write_json_atomic

__all__ = [
    "GradientSimilarityTracker",
    "LossFn",
    "default_loss",
    "gradient_cosine_matrix",
    "shared_parameters",
    "task_gradients",
]

#: (model, task_name, batch) -> scalar loss.
LossFn = Callable[[nn.Module, str, Mapping[str, Any]], torch.Tensor]


def default_loss(model: nn.Module, task_name: str, batch: Mapping[str, Any]) -> torch.Tensor:
    """The task's training loss as `MultiTaskModel.forward` computes it (the batch carries ``labels``)."""
    return model(task=task_name, **batch).loss


def unwrap(model: nn.Module) -> nn.Module:
    """The model without DDP / DataParallel / compile wrappers (see the module's note on DDP)."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def shared_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The trainable parameters every task shares: ``model.encoder``'s with ``requires_grad``.

    In full fine-tuning that is the whole encoder; under PEFT, only the adapters (PEFT froze the rest);
    with frozen layers, the unfrozen ones. Heads are task-specific and never included.

    Raises:
        ValueError: the model has no ``encoder`` or nothing in it is trainable.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"{type(model).__name__} has no `encoder` module; pass the shared parameters explicitly")
    named = [(f"encoder.{name}", p) for name, p in encoder.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameter in model.encoder: nothing is shared between tasks to compare")
    return named


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout) for the duration, then the model's own mode again."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _named(model: nn.Module, params: Sequence[nn.Parameter] | Sequence[tuple[str, nn.Parameter]] | None):
    if params is None:
        return shared_parameters(model)
    named = [p if isinstance(p, tuple) else (f"param{i}", p) for i, p in enumerate(params)]
    if not named:
        raise ValueError("params is empty")
    return named


@torch.enable_grad()
def task_gradients(
    model: nn.Module,
    batches: Mapping[str, Mapping[str, Any]],
    *,
    params: Sequence[nn.Parameter] | Sequence[tuple[str, nn.Parameter]] | None = None,
    loss_fn: LossFn = default_loss,
    deterministic: bool = True,
) -> dict[str, torch.Tensor]:
    """Each task's loss gradient on the shared parameters, flattened (without touching ``.grad``).

    A parameter a task's loss does not reach (another task's adapter in per-task PEFT) contributes
    zeros. Per-task adapters are therefore not shared: their cosines between tasks are 0.

    Args:
        model: a `MultiTaskModel` (DDP-wrapped ones are unwrapped).
        batches: task_name -> one batch of that task (with labels); moved to the model's device.
        params: the parameters (or (name, parameter) pairs) to differentiate; default
            `shared_parameters(model)`.
        loss_fn: (model, task_name, batch) -> loss; default: the model's own loss for the task.
        deterministic: run in eval mode (no dropout, no RNG draws); False keeps the model's mode.

    Returns:
        task_name -> (P,) float32 gradient, in the order of `batches`.

    Example:
        >>> grads = task_gradients(model, {"rte": batch_a, "stsb": batch_b})  # doctest: +SKIP
        >>> grads["rte"].shape                                                # doctest: +SKIP
        torch.Size([22713216])
    """
    model = unwrap(model)
    named = _named(model, params)
    device = named[0][1].device
    context = eval_mode(model) if deterministic else contextlib.nullcontext()
    grads = {}
    with context:
        for task_name, batch in batches.items():
            loss = loss_fn(model, task_name, to_device(batch, device))
            # per-task PEFT switches adapters in the forward pass, freezing the others: differentiate only
            # what requires grad now
            wanted = [i for i, (_, p) in enumerate(named) if p.requires_grad]
            found = torch.autograd.grad(loss, [named[i][1] for i in wanted], allow_unused=True)
            pieces = [torch.zeros(p.numel(), device=device, dtype=torch.float32) for _, p in named]
            for i, g in zip(wanted, found):
                if g is not None:
                    pieces[i] = g.detach().reshape(-1).float()
            grads[task_name] = torch.cat(pieces)
    return grads


def gradient_cosine_matrix(grads: Mapping[str, torch.Tensor], eps: float = 1e-12) -> tuple[list[str], np.ndarray]:
    """Pairwise cosine similarities of flattened gradients.

    Args:
        grads: task_name -> (P,) gradient (e.g. from `task_gradients`).
        eps: floor of the norm product; a zero gradient has cosine 0 with everything (itself included).

    Returns:
        (task names, (T, T) float64 matrix), symmetric, 1 on the diagonal for non-zero gradients.

    Example:
        >>> g = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([-2.0, 0.0]), "c": torch.tensor([0.0, 3.0])}
        >>> gradient_cosine_matrix(g)[1].tolist()
        [[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    names = list(grads)
    vectors = [grads[n].detach().double() for n in names]
    norms = [float(v.norm()) for v in vectors]
    t = len(names)
    matrix = np.zeros((t, t))
    # pairwise dot products, not a (T, P) stack: no extra copy of all the gradients
    for i in range(t):
        for j in range(i, t):
            value = float(vectors[i] @ vectors[j]) / max(norms[i] * norms[j], eps)
            matrix[i, j] = matrix[j, i] = value
    return names, np.clip(matrix, -1.0, 1.0)


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as JSON atomically, non-finite floats as null (see `hfmtl.files`); returns the path."""
    write_json_atomic(path, data)
    return Path(path)


class GradientSimilarityTracker:
    """Records the task x task gradient cosine matrix at the steps a trainer calls it, and saves JSON.

    The trainer owns the schedule and the batches: every N steps it calls `record` with one batch per
    task (e.g. the next batch of each task's loader, or a fixed probe set). Nothing here changes the
    model's parameters, ``.grad`` fields, mode or RNG state. See the module's note on DDP.

    Args:
        task_names: the tasks, in matrix order; None: the keys of the first `record`'s batches.
        params: the parameters to compare on (default: `shared_parameters` of the model at each record).
        loss_fn: (model, task_name, batch) -> loss; default: the model's loss.

    Example:
        >>> tracker = GradientSimilarityTracker(["rte", "stsb"])                    # doctest: +SKIP
        >>> if step % 100 == 0:                                                     # doctest: +SKIP
        ...     tracker.record(step, accelerator.unwrap_model(model), probe_batches)
        >>> tracker.save(output_dir / "gradient_similarity.json")                  # doctest: +SKIP
        >>> heatmap(tracker.mean, tracker.task_names, output_dir / "gradient_similarity.png")  # doctest: +SKIP
    """

    def __init__(
        self,
        task_names: Sequence[str] | None = None,
        params: Sequence[nn.Parameter] | Sequence[tuple[str, nn.Parameter]] | None = None,
        loss_fn: LossFn = default_loss,
    ):
        self.task_names: list[str] | None = list(task_names) if task_names is not None else None
        self.params = params
        self.loss_fn = loss_fn
        self.steps: list[int] = []
        self.matrices: list[np.ndarray] = []
        self.num_parameters: int | None = None

    def record(self, step: int, model: nn.Module, batches: Mapping[str, Mapping[str, Any]]) -> np.ndarray:
        """Compute and keep the cosine matrix of one batch per task at training step `step`.

        Raises:
            ValueError: `batches` lacks one of the tracked tasks.
        """
        if self.task_names is None:
            self.task_names = list(batches)
        missing = [t for t in self.task_names if t not in batches]
        if missing:
            raise ValueError(f"step {step}: no batch for task(s) {missing}; record needs one batch per tracked task")
        ordered = {t: batches[t] for t in self.task_names}
        grads = task_gradients(model, ordered, params=self.params, loss_fn=self.loss_fn)
        self.num_parameters = int(next(iter(grads.values())).numel())
        _, matrix = gradient_cosine_matrix(grads)
        self.steps.append(int(step))
        self.matrices.append(matrix)
        return matrix

    @property
    def mean(self) -> np.ndarray:
        """The element-wise mean of the recorded matrices."""
        if not self.matrices:
            raise ValueError("no matrix recorded yet")
        return np.mean(self.matrices, axis=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "gradient_cosine",
            "tasks": list(self.task_names or []),
            "steps": list(self.steps),
            "num_parameters": self.num_parameters,
            "matrices": [m.tolist() for m in self.matrices],
            "mean": self.mean.tolist() if self.matrices else None,
        }

    def save(self, path: str | Path) -> Path:
        """Write ``{kind, tasks, steps, num_parameters, matrices, mean}`` as JSON (atomically)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> GradientSimilarityTracker:
        """A tracker holding the records of a saved JSON file (to plot, or to continue recording)."""
        data = json.loads(Path(path).read_text())
        tracker = cls(data["tasks"] or None)
        tracker.steps = [int(s) for s in data["steps"]]
        tracker.matrices = [np.asarray(m, dtype=np.float64) for m in data["matrices"]]
        tracker.num_parameters = data.get("num_parameters")
        return tracker
