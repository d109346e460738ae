"""Task x task matrices of how training on one task affects another: measured transfer, and TAG's cheap
lookahead affinity.

- `transfer_matrix` (the expensive, direct measure): given B's dev score after a short training stage on
  A and then on B (the caller runs those stages, e.g. with ``stages:`` configs), and B's score when
  trained alone with the same budget on B, the gain ``score(A -> B) - score(B alone)`` for every pair.
- `lookahead_affinity` (Fifty et al. 2021, "Efficiently Identifying Task Groupings for Multi-Task
  Learning", NeurIPS; TAG): ``Z[i, j] = 1 - L_j(theta - lr * grad L_i(theta)) / L_j(theta)``: the relative
  change of task j's loss after one SGD step on task i's batch, on the shared parameters only (heads
  unchanged), averaged over a few groups of batches. Positive: a step on i helps j; negative: it hurts.
  For a small `learning_rate` it is, to first order, ``lr * <grad L_i, grad L_j> / L_j``: the gradient
  dot product (not the cosine) scaled by j's loss, so large-gradient tasks dominate a row.

Rows are sources (i, A), columns targets (j, B), in both.

Example:
    >>> m = transfer_matrix({("mnli", "rte"): 0.68, ("sst2", "rte"): 0.60}, {"rte": 0.62})
    >>> m.values.round(2).tolist()
    [[0.06], [-0.02]]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .gradients import LossFn, default_loss, eval_mode, shared_parameters, task_gradients, to_device, unwrap, write_json

__all__ = ["TaskMatrix", "lookahead_affinity", "transfer_matrix"]


@dataclass
class TaskMatrix:
    """A source x target matrix of task relations, with what produced it.

    Attributes:
        kind: what the values are ('transfer_gain', 'lookahead_affinity', ...).
        sources: row labels.
        targets: column labels.
        values: (len(sources), len(targets)) float64; NaN where unknown.
        info: anything else worth saving (the scores behind the gains, the learning rate...).
    """

    kind: str
    sources: list[str]
    targets: list[str]
    values: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "sources": list(self.sources),
            "targets": list(self.targets),
            "values": self.values.tolist(),
            **self.info,
        }

    def save(self, path: str | Path) -> Path:
        """Write the matrix as JSON, atomically; NaN becomes null."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TaskMatrix:
        data = json.loads(Path(path).read_text())
        values = np.array([[np.nan if v is None else v for v in row] for row in data.pop("values")], dtype=np.float64)
        kind, sources, targets = data.pop("kind"), data.pop("sources"), data.pop("targets")
        return cls(kind, sources, targets, values.reshape(len(sources), len(targets)), data)


def _pairs(scores: Mapping[Any, Any]) -> dict[tuple[str, str], float]:
    """{(A, B): score} from {(A, B): score} or {A: {B: score}}."""
    pairs = {}
    for key, value in scores.items():
        if isinstance(value, Mapping):
            pairs.update({(str(key), str(target)): float(v) for target, v in value.items()})
        elif isinstance(key, tuple) and len(key) == 2:
            pairs[(str(key[0]), str(key[1]))] = float(value)
        else:
            raise ValueError(f"pair_scores key {key!r}: use (source, target) tuples or {{source: {{target: score}}}}")
    return pairs


def transfer_matrix(
    pair_scores: Mapping[tuple[str, str], float] | Mapping[str, Mapping[str, float]],
    alone_scores: Mapping[str, float],
    *,
    sources: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    relative: bool = False,
    higher_is_better: bool = True,
) -> TaskMatrix:
    """The gain of target B from a preceding stage on source A, for every measured pair.

    Args:
        pair_scores: (A, B) -> B's dev score after a short stage on A then B (or ``{A: {B: score}}``).
        alone_scores: B -> B's dev score trained alone at the same budget on B.
        sources, targets: row / column order; default: the order tasks first appear in `pair_scores`.
        relative: divide each gain by ``|score(B alone)|``.
        higher_is_better: False for scores such as losses, where the gain is ``alone - pair``.

    Returns:
        A `TaskMatrix` of kind 'transfer_gain' (NaN for pairs not measured), with the scores in ``info``.

    Raises:
        ValueError: a target has a pair score but no alone score.

    Example:
        >>> m = transfer_matrix({"mnli": {"rte": 0.70}}, {"rte": 0.60}, relative=True)
        >>> round(float(m.values[0, 0]), 4)
        0.1667
    """
    pairs = _pairs(pair_scores)
    sources = list(sources) if sources is not None else list(dict.fromkeys(a for a, _ in pairs))
    targets = list(targets) if targets is not None else list(dict.fromkeys(b for _, b in pairs))
    missing = sorted({b for _, b in pairs if b in targets} - set(alone_scores))
    if missing:
        raise ValueError(f"no alone score for target(s) {missing}: the gain needs B's score trained alone")
    values = np.full((len(sources), len(targets)), np.nan)
    for i, a in enumerate(sources):
        for j, b in enumerate(targets):
            if (a, b) in pairs:
                gain = pairs[(a, b)] - float(alone_scores[b])
                gain = gain if higher_is_better else -gain
                values[i, j] = gain / abs(float(alone_scores[b])) if relative else gain
    info = {
        "pair_scores": {f"{a}->{b}": s for (a, b), s in pairs.items()},
        "alone_scores": {b: float(s) for b, s in alone_scores.items()},
        "relative": relative,
        "higher_is_better": higher_is_better,
    }
    return TaskMatrix("transfer_gain", sources, targets, values, info)


class _LossModule(nn.Module):
    """Wraps a model so that `torch.func.functional_call` can swap its parameters under any loss_fn."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, task_name: str, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.loss_fn(self.model, task_name, batch)


def lookahead_affinity(
    model: nn.Module,
    batches: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Mapping[str, Any]]],
    *,
    learning_rate: float,
    params: Sequence[nn.Parameter] | None = None,
    loss_fn: LossFn = default_loss,
) -> TaskMatrix:
    """TAG's inter-task affinity ``Z[i, j] = 1 - L_j(theta'_i) / L_j(theta)`` for all pairs of tasks.

    ``theta'_i = theta - learning_rate * grad L_i(theta)`` on the shared parameters; both losses of j are
    on j's same batch. Computed functionally (`torch.func.functional_call` with the stepped parameters
    swapped in): the model's parameters, ``.grad`` fields, mode and RNG are left as they were. It runs in
    eval mode (no dropout) so that the two losses of j differ only by the step.

    Cost per group of batches: T backward passes and T + T^2 forward passes. Memory: the shared
    parameters once more plus one task's gradient (2P floats), one source task at a time.

    Args:
        model: a `MultiTaskModel` (DDP-wrapped ones are unwrapped; see `hfmtl.analysis.gradients`).
        batches: one batch per task ({task_name: batch}), or a list of such groups to average over.
        learning_rate: the lookahead SGD step size (TAG uses the training learning rate).
        params: the parameters to step (default: `shared_parameters(model)`); must belong to `model`.
        loss_fn: (model, task_name, batch) -> loss; default: the model's loss.

    Returns:
        A `TaskMatrix` of kind 'lookahead_affinity' (rows: the task stepped on, columns: the task
        measured), averaged over the groups; ``info`` has the per-group matrices.

    Example:
        >>> m = lookahead_affinity(model, [{"rte": b1, "stsb": b2}, {"rte": b3, "stsb": b4}],  # doctest: +SKIP
        ...                        learning_rate=2e-5)
        >>> m.values[0, 1]  # a step on rte helps stsb when > 0                                 # doctest: +SKIP
    """
    model = unwrap(model)
    groups = [batches] if isinstance(batches, Mapping) else list(batches)
    if not groups:
        raise ValueError("batches is empty")
    tasks = list(groups[0])
    if any(list(g) != tasks for g in groups):
        raise ValueError(f"every group of batches needs the same tasks in the same order ({tasks})")
    names = {id(p): name for name, p in model.named_parameters()}
    chosen = [p for _, p in shared_parameters(model)] if params is None else list(params)
    if any(id(p) not in names for p in chosen):
        raise ValueError("params must be parameters of the model")
    named = [(names[id(p)], p) for p in chosen]
    device = chosen[0].device
    wrapper = _LossModule(model, loss_fn)
    per_group = []
    with eval_mode(model):
        for group in groups:
            group = {t: to_device(b, device) for t, b in group.items()}
            with torch.no_grad():
                base = np.array([float(loss_fn(model, t, group[t])) for t in tasks])
            z = np.zeros((len(tasks), len(tasks)))
            for i, source in enumerate(tasks):
                grad = task_gradients(model, {source: group[source]}, params=named, loss_fn=loss_fn)[source]
                stepped, offset = {}, 0
                for name, p in named:
                    g = grad[offset : offset + p.numel()].view_as(p).to(p.dtype)
                    stepped[f"model.{name}"] = p.detach() - learning_rate * g
                    offset += p.numel()
                del grad
                with torch.no_grad():
                    for j, target in enumerate(tasks):
                        after = float(torch.func.functional_call(wrapper, stepped, (target, group[target])))
                        z[i, j] = 1.0 - after / base[j] if base[j] != 0 else np.nan
            per_group.append(z)
    values = np.mean(per_group, axis=0)
    info = {"learning_rate": learning_rate, "num_groups": len(groups), "per_group": [z.tolist() for z in per_group]}
    return TaskMatrix("lookahead_affinity", tasks, list(tasks), values, info)
