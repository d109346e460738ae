"""The two contracts of a balancing strategy: weight the task losses, or combine the task gradients.

A strategy is a `torch.nn.Module` so that the trainer gets, for free and in the usual way, what a
strategy may own: learnable parameters (`parameters()`, for the trainer's optimizer), tensor state that
follows `.to(device)` (buffers), and an exact-resume `state_dict()` / `load_state_dict()` — tensors
plus an ``_extra_state`` entry holding the seeded RNG and plain Python state. Everything in a state dict
loads with ``torch.load(..., weights_only=True)`` (tensors, numbers, strings, lists, dicts only), so
`Accelerator.register_for_checkpointing(balancer)` saves and restores it with the run.

A strategy computes; it never owns the loop (house style 6): it does not call ``backward``, step the
model's optimizer or touch ``.grad``. The trainer feeds it tensors and applies what comes back:

- `LossWeighting`: ``out = balancer({task_name: loss})``; the trainer backpropagates ``out.loss``;
- `GradientCombiner`: ``out = balancer(grads, task_names)`` on the (T, P) matrix of flattened per-task
  gradients of the *shared* parameters; the trainer writes ``out.grad`` into their ``.grad``.

Inputs that feed a strategy's state (losses, gradient norms, gradients) must be the same on every
process — the trainer reduces them first — or the processes' weights drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError


@dataclass
class WeightedLoss:
    """What a `LossWeighting` returns.

    Attributes:
        loss: the scalar to call ``backward`` on (it is not always the weighted sum of the losses:
            uncertainty weighting adds its regulariser, FAMO sums log-losses).
        weights: task_name -> the detached 0-dim weight whose product with that task's loss gives its
            gradient in ``loss`` (d loss / d L_t), for logging; only the tasks of this step.
    """

    loss: torch.Tensor
    weights: dict[str, torch.Tensor]


@dataclass
class CombinedGradient:
    """What a `GradientCombiner` returns.

    Attributes:
        grad: (P,) the combined gradient of the shared parameters, ``weights @ grads``.
        weights: (T,) the coefficient of each task's gradient in ``grad`` (every method here returns a
            linear combination of the task gradients).
        task_names: the task of each row of the input matrix.
        diagnostics: floats for logging: ``conflicts`` (pairs of tasks whose gradients have a negative
            inner product) and what the method adds (projections made, solver residual...).
        coefficients: (T, T) for methods that rewrite each task's gradient (PCGrad, GradVac,
            Aligned-MTL): row i holds task i's rewritten gradient as a combination of the input rows
            (``coefficients @ grads``); None for the others.
    """

    grad: torch.Tensor
    weights: torch.Tensor
    task_names: tuple[str, ...]
    diagnostics: dict[str, float] = field(default_factory=dict)
    coefficients: torch.Tensor | None = None


class Balancer(nn.Module):
    """Common base: the task names, a seeded RNG, and the state a resume needs.

    Args:
        task_names: every task of the run, in a fixed order (the order of rows, weights and state).
        seed: seeds the strategy's own `torch.Generator` (RLW's samples, PCGrad's and GradVac's task
            orders); its state is part of `state_dict`, so a resumed run draws the same numbers.
    """

    name: ClassVar[str] = ""  # set by @register_balancer
    #: True when the strategy's math needs every task's loss/gradient at every step (FAMO, GradNorm);
    #: the trainer must then run an all-tasks step, not one task per step.
    needs_all_tasks: ClassVar[bool] = False

    def __init__(self, task_names: Sequence[str], seed: int = 0):
        super().__init__()
        names = tuple(str(n) for n in task_names)
        if not names:
            raise ConfigError(f"balancing {self.name!r} needs at least one task")
        if len(set(names)) != len(names):
            raise ConfigError(f"balancing {self.name!r}: task names repeat in {list(names)}")
        self.task_names = names
        self._index = {n: i for i, n in enumerate(names)}
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    def _indices(self, names: Sequence[str]) -> list[int]:
        """Positions of `names` in `task_names`; a clear error for an unknown or, if needed, missing task."""
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise ValueError(f"balancing {self.name!r}: unknown task(s) {unknown}; known: {list(self.task_names)}")
        if len(set(names)) != len(names):
            raise ValueError(f"balancing {self.name!r}: a task appears twice in {list(names)}")
        if self.needs_all_tasks:
            missing = [n for n in self.task_names if n not in set(names)]
            if missing:
                raise ValueError(
                    f"balancing {self.name!r} needs every task at every step; missing {missing} "
                    "(use an all-tasks step, or a strategy that accepts a subset)"
                )
        return [self._index[n] for n in names]

    # nn.Module puts this in state_dict() under "_extra_state" and hands it back on load.
    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), **self._extra_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        """Plain Python state of a subclass (numbers, lists, dicts)."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass


class LossWeighting(Balancer):
    """Turns the losses of the tasks of one step into the scalar to backpropagate.

    Subclasses implement `_combine`. Unless `needs_all_tasks`, any non-empty subset of the tasks may be
    given at a step; the others are skipped (no weight, no state change).

    Example:
        >>> from hfmtl.balancing import get_balancer
        >>> equal = get_balancer("equal", ["a", "b"])
        >>> out = equal({"a": torch.tensor(1.0), "b": torch.tensor(3.0)})
        >>> float(out.loss), {k: float(v) for k, v in out.weights.items()}
        (4.0, {'a': 1.0, 'b': 1.0})
    """

    def forward(self, losses: Mapping[str, torch.Tensor]) -> WeightedLoss:
        """Weight the losses of this step.

        Args:
            losses: task_name -> scalar loss tensor (with its graph), for the tasks of this step.
        """
        names = self._present(losses)
        # float32 whatever the autocast dtype: weights like exp(-s) or 1/L_0 lose too much in bf16
        stacked = torch.stack([losses[n].reshape(()) for n in names]).float()
        total, weights = self._combine(names, [self._index[n] for n in names], stacked)
        detached = weights.detach().clone()  # a snapshot: some strategies' weights are views of their state
        return WeightedLoss(total, {n: detached[i] for i, n in enumerate(names)})

    def _present(self, losses: Mapping[str, Any]) -> list[str]:
        """The tasks of `losses` in `task_names` order (so RNG use never depends on dict order)."""
        if not losses:
            raise ValueError(f"balancing {self.name!r}: no task losses given")
        self._indices(list(losses))
        return [n for n in self.task_names if n in losses]

    def _combine(self, names: list[str], indices: list[int], losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, weights (len(names),)) for the stacked losses of the tasks `names`."""
        raise NotImplementedError


class GradientCombiner(Balancer):
    """Combines the per-task gradients of the shared parameters into one update direction.

    Input: a (T, P) matrix, row t the flattened gradient of task t's loss w.r.t. the shared parameters
    (float32; under PEFT, P is the adapter parameters only). Every method here reads the gradients only
    through their (T, T) Gram matrix (one O(T^2 P) matmul on the gradients' device, then a T x T copy to
    the host, i.e. one device sync per step) and returns a linear combination of the rows (one O(T P)
    matvec). Cost for the trainer: T backward passes per step (one per task, each keeping the graph
    until the last) instead of one, and T x P floats of gradient memory.

    Subclasses implement `_solve` on the Gram matrix (float64 numpy). A Gram matrix with inf/NaN (an
    fp16 overflow) is not solved: the weights are then uniform (1/T), so the non-finite values reach the
    combined gradient and the loop's usual overflow handling skips the step.

    Example:
        >>> from hfmtl.balancing import get_balancer
        >>> pcgrad = get_balancer("pcgrad", ["a", "b"], seed=0)
        >>> out = pcgrad(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]))
        >>> out.grad.tolist(), out.diagnostics["conflicts"]
        ([0.5, 1.5], 1.0)
    """

    def forward(self, grads: torch.Tensor, task_names: Sequence[str] | None = None) -> CombinedGradient:
        """Combine the rows of `grads`.

        Args:
            grads: (T, P) per-task gradients of the shared parameters, row i for ``task_names[i]``.
            task_names: the task of each row; default: all tasks, in `task_names` order.
        """
        names = self.task_names if task_names is None else tuple(task_names)
        if grads.dim() != 2 or grads.shape[0] != len(names) or not grads.is_floating_point():
            raise ValueError(
                f"balancing {self.name!r}: expected a floating (T, P) gradient matrix with T={len(names)} rows "
                f"(one per task of {list(names)}), got {tuple(grads.shape)} {grads.dtype}"
            )
        indices = self._indices(names)
        g = grads if grads.dtype == torch.float64 else grads.float()  # half precision would lose the Gram
        gram = (g @ g.T).double().cpu().numpy()
        conflicts = float(np.triu(gram < 0, k=1).sum())
        coefficients = None
        if np.isfinite(gram).all():
            alpha, diagnostics, coefficients = self._solve(gram, indices)
        else:
            alpha, diagnostics = np.full(len(names), 1.0 / len(names)), {"nonfinite": 1.0}
        weights = torch.as_tensor(alpha, dtype=grads.dtype).to(grads.device)
        if coefficients is not None:
            coefficients = torch.as_tensor(coefficients, dtype=grads.dtype).to(grads.device)
        return CombinedGradient(weights @ grads, weights, names, {"conflicts": conflicts, **diagnostics}, coefficients)

    def _solve(self, gram: np.ndarray, indices: list[int]) -> tuple[np.ndarray, dict[str, float], np.ndarray | None]:
        """(weights (T,), diagnostics, per-task coefficients (T, T) or None) from the Gram matrix."""
        raise NotImplementedError


# --- helpers shared by the strategies of this package ------------------------------------------------


def _normalized(gram: np.ndarray) -> np.ndarray:
    """The Gram matrix divided by its mean diagonal: the solvers below are scale-free, and a Gram of
    gradients of norm 1e-6 or 1e3 must not change their tolerances."""
    scale = float(np.mean(np.diag(gram)))
    return gram / scale if scale > 0 else gram


def _adam_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One in-place Adam step (Kingma & Ba 2015) on a strategy's own small weight vector.

    Written out here (not `torch.optim.Adam`) because the weights it moves are buffers, not parameters:
    the trainer's optimizer must never see them (GradNorm's and FAMO's weights are moved only by their
    own update rule), and the moments are then plain buffers of the state dict.
    """
    beta1, beta2 = betas
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(eps)
    param.sub_(lr * (exp_avg / (1 - beta1**step)) / denom)


def _check_number(strategy: str, key: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    """`value` as a float within [low, high] (either may be open-ended), else a one-line ConfigError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if math.isnan(number) or (low is not None and number < low) or (high is not None and number > high):
        bounds = f"in [{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ConfigError(f"balancing {strategy!r}: {key} must be a number {bounds}, got {value!r}")
    return number


def _check_task_weights(strategy: str, key: str, weights: Any, task_names: Sequence[str]) -> list[float]:
    """A task_name -> weight mapping with one non-negative number per task, in `task_names` order."""
    if not isinstance(weights, Mapping):
        raise ConfigError(f"balancing {strategy!r}: {key} must map each task name to a weight, got {weights!r}")
    unknown = sorted(set(weights) - set(task_names))
    missing = [n for n in task_names if n not in weights]
    if unknown or missing:
        raise ConfigError(
            f"balancing {strategy!r}: {key} must give one weight per task {list(task_names)}"
            + (f"; unknown {unknown}" if unknown else "")
            + (f"; missing {missing}" if missing else "")
        )
    return [_check_number(strategy, f"{key}.{n}", weights[n], low=0.0) for n in task_names]
