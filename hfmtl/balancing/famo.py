"""FAMO (Liu, Liu, Stone & Liu 2023, "FAMO: Fast Adaptive Multitask Optimization").

FAMO seeks the update that decreases every task's *log* loss at the same rate, with one backward pass
per step (no per-task gradients). Task logits xi give z = softmax(xi); with D_t = L_t - b_t (b_t a
lower bound of the loss, 0 by default) and c = (sum_t z_t / D_t)^-1 (a constant),

    loss = c * sum_t z_t log D_t,   whose gradient is   sum_t (c z_t / D_t) grad L_t

i.e. task t's loss weight is c z_t / D_t (these weights sum to 1). After the model's step, the change
of the log losses, delta_t = log D_t(before) - log D_t(after), moves the logits:

    xi <- xi - lr * Adam( J_softmax(xi)^T delta + gamma * xi )

so a task whose log loss fell faster than the others loses weight. The paper writes this step as plain
gradient descent, xi <- xi - beta (J^T delta + gamma xi); its reference experiments give that same
gradient to Adam, as we do: delta is a per-step change of log losses (~1e-3), which plain descent with
beta = 0.025 would hardly move. Scale: we multiply the loss and its weights by T, so that equal z and
equal losses give weights 1, the scale of ``equal`` (the paper's weights sum to 1; a constant factor on
the step size).

Trainer protocol (all tasks every step):

    out = famo(losses)                                   # losses: {task: loss}, every task
    accelerator.backward(out.loss); optimizer.step(); optimizer.zero_grad()
    with torch.no_grad():                                # the losses at the new parameters
        after = {t: model(task=t, **batch[t]).loss for t in tasks}
    famo.update({t: l.detach() for t, l in losses.items()}, after)

Re-evaluating the same batches after the step is the exact update (cost: one extra forward pass per
task, no backward). The cheap variant passes the next step's losses (on new batches) as `losses_after`:
no extra cost, a noisier delta. Under several processes, average both loss dicts over processes first.
Cost: 1 backward pass per step, T floats of state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .base import LossWeighting, _adam_step, _check_number, _check_task_weights
from .registry import register_balancer


@register_balancer("famo")
class FAMO(LossWeighting):
    """FAMO loss weighting; see the module docstring for the math and the trainer protocol.

    Needs every task at every step (z is a distribution over all tasks).

    Args:
        task_names: the run's tasks.
        lr: beta, the learning rate of the logits' Adam step (paper: 0.025).
        gamma: the logits' weight decay (paper: 0.001 on most benchmarks).
        min_losses: b_t, a lower bound of each task's loss: a number for every task or a task_name ->
            number mapping (0 for the usual non-negative losses).
        seed: unused (the method is deterministic).

    Example:
        >>> from hfmtl.balancing import get_balancer
        >>> famo = get_balancer("famo", ["a", "b"])
        >>> out = famo({"a": torch.tensor(2.0), "b": torch.tensor(0.5)})
        >>> [round(float(w), 3) for w in out.weights.values()]  # 2 * c z_t / L_t, c = 1 / (0.25 + 1)
        [0.4, 1.6]
        >>> famo.update({"a": torch.tensor(2.0), "b": torch.tensor(0.5)}, {"a": torch.tensor(1.0), "b": torch.tensor(0.5)})
        >>> bool(famo.probabilities()[0] < 0.5)  # a's loss halved: a loses weight
        True
    """

    needs_all_tasks = True
    _EPS = 1e-8  # keeps log D finite when a loss reaches its bound

    def __init__(
        self,
        task_names: Sequence[str],
        lr: float = 0.025,
        gamma: float = 0.001,
        min_losses: float | Mapping[str, float] = 0.0,
        seed: int = 0,
    ):
        super().__init__(task_names, seed)
        self.lr = _check_number(self.name, "lr", lr, low=0.0)
        self.gamma = _check_number(self.name, "gamma", gamma, low=0.0)
        if isinstance(min_losses, Mapping):
            bounds = _check_task_weights(self.name, "min_losses", min_losses, self.task_names)
        else:
            bounds = [_check_number(self.name, "min_losses", min_losses, low=0.0)] * self.num_tasks
        T = self.num_tasks
        self.register_buffer("min_losses", torch.tensor(bounds, dtype=torch.float32))
        # buffers, not parameters: only `update` moves the logits, never the trainer's optimizer
        self.register_buffer("logits", torch.zeros(T))
        self.register_buffer("exp_avg", torch.zeros(T))
        self.register_buffer("exp_avg_sq", torch.zeros(T))
        self._steps = 0

    def probabilities(self) -> torch.Tensor:
        """z = softmax(xi), the task distribution, in `task_names` order."""
        return torch.softmax(self.logits, dim=0)

    def _distance(self, losses: torch.Tensor) -> torch.Tensor:
        return (losses - self.min_losses.to(losses.device)).clamp_min(self._EPS)

    def _combine(self, names, indices, losses):
        z = self.probabilities().to(losses.device)
        distance = self._distance(losses)
        c = 1.0 / (z / distance.detach()).sum()
        scale = self.num_tasks * c
        return scale * (z * distance.log()).sum(), scale * z / distance.detach()

    def update(self, losses_before: Mapping[str, torch.Tensor], losses_after: Mapping[str, torch.Tensor]) -> None:
        """Move the task logits from the change of the log losses over the model's last step.

        Args:
            losses_before: task_name -> loss at the parameters before the step (the losses given to
                `forward`).
            losses_after: task_name -> loss after the step (same batches re-evaluated, or the next batches).
        """
        self._indices(list(losses_before))
        self._indices(list(losses_after))
        device = self.logits.device

        def stacked(losses):
            return torch.stack([losses[n].detach().float().reshape(()) for n in self.task_names]).to(device)

        delta = self._distance(stacked(losses_before)).log() - self._distance(stacked(losses_after)).log()
        z = self.probabilities()
        # J_softmax is diag(z) - z z^T (symmetric), so J^T delta = z * (delta - z . delta)
        grad = z * (delta - (z * delta).sum()) + self.gamma * self.logits
        self._steps += 1
        _adam_step(self.logits, grad, self.exp_avg, self.exp_avg_sq, self._steps, self.lr)

    def _extra_state(self) -> dict[str, Any]:
        return {"steps": self._steps}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._steps = int(state["steps"])
