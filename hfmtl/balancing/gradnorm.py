"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich 2018, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks").

Learned task weights w_t make the gradient norm that each weighted task loss puts on a chosen shared
layer W (usually the last shared layer) track a common target scaled by how far behind the task is:

    G_t = || grad_W (w_t L_t) || = w_t * g_t,      g_t = || grad_W L_t ||
    Gbar = mean_t G_t,   Ltilde_t = L_t / L_t(0),   r_t = Ltilde_t / mean_i Ltilde_i
    L_grad = sum_t | G_t - Gbar * r_t^alpha |          (the target Gbar * r_t^alpha is a constant)

then w <- w - lr * (Adam of dL_grad/dw) and w is renormalised to sum to T. The model trains on
sum_t w_t L_t with the w_t as constants: the weights move only by L_grad (a w inside the model's loss
would be pushed to 0).

Because G_t = w_t * g_t with w_t > 0, dL_grad/dw_t = sign(G_t - target_t) * g_t in closed form: the
strategy needs the *unweighted* per-task norms g_t from the trainer, never a second-order graph.

Trainer protocol (all tasks every step):

    losses = {t: model(task=t, **batch[t]).loss for t in tasks}
    norms = task_gradient_norms(losses, shared_layer.parameters())  # T partial backward passes to W
    out = gradnorm(losses)                                           # sum_t w_t L_t
    accelerator.backward(out.loss); optimizer.step(); optimizer.zero_grad()
    gradnorm.update(losses, norms)                                   # the weights of the next step

Cost: T extra backward passes from each loss down to W only (cheap when W is the top shared layer),
T floats of state. Under several processes, average the losses and norms over processes before
`update` (e.g. `accelerator.reduce(..., "mean")`) or the processes' weights drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from .base import LossWeighting, _adam_step, _check_number
from .registry import register_balancer


def task_gradient_norms(
    losses: Mapping[str, torch.Tensor], parameters: Iterable[torch.nn.Parameter]
) -> dict[str, torch.Tensor]:
    """task_name -> || d loss / d parameters ||, the GradNorm inputs, without touching any ``.grad``.

    Uses `torch.autograd.grad` with ``retain_graph=True`` (one partial backward pass per task, from the
    loss down to `parameters` only), so the trainer's later backward of the total loss still works.
    Under DDP, call it on the losses of the unwrapped model's graph or inside ``accelerator.no_sync``:
    it is a local computation, and its results must then be averaged over processes.

    Args:
        losses: task_name -> scalar loss with its graph.
        parameters: the shared layer W (e.g. the last encoder layer's weights).
    """
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("task_gradient_norms: no trainable parameters given for the shared layer")
    norms = {}
    for task_name, loss in losses.items():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
        norms[task_name] = torch.stack(squares).sum().sqrt() if squares else loss.new_zeros((), dtype=torch.float32)
    return norms


@register_balancer("gradnorm")
class GradNorm(LossWeighting):
    """GradNorm loss weighting; see the module docstring for the math and the trainer protocol.

    Needs every task at every step (the targets compare each task with the mean over tasks).

    Args:
        task_names: the run's tasks.
        alpha: the asymmetry alpha >= 0 (0: equal gradient norms; the paper uses 0.12 to 3, 1.5 often).
        lr: the learning rate of the weights' own Adam step.
        seed: unused (the method is deterministic).

    Example:
        >>> from hfmtl.balancing import get_balancer
        >>> gn = get_balancer("gradnorm", ["a", "b"], lr=0.025)
        >>> losses = {"a": torch.tensor(1.0), "b": torch.tensor(1.0)}
        >>> gn.update(losses, {"a": torch.tensor(1.0), "b": torch.tensor(3.0)})  # b's gradient is larger
        >>> [round(float(w), 3) for w in gn.task_weights]
        [1.025, 0.975]
    """

    needs_all_tasks = True

    def __init__(self, task_names: Sequence[str], alpha: float = 1.5, lr: float = 0.025, seed: int = 0):
        super().__init__(task_names, seed)
        self.alpha = _check_number(self.name, "alpha", alpha, low=0.0)
        self.lr = _check_number(self.name, "lr", lr, low=0.0)
        T = self.num_tasks
        # buffers, not parameters: the trainer's optimizer must not move them (see `_adam_step`)
        self.register_buffer("task_weights", torch.ones(T))
        self.register_buffer("initial_losses", torch.full((T,), float("nan")))
        self.register_buffer("exp_avg", torch.zeros(T))
        self.register_buffer("exp_avg_sq", torch.zeros(T))
        self._steps = 0

    def _combine(self, names, indices, losses):
        weights = self.task_weights.to(losses.device)  # all tasks, in task_names order
        return (weights * losses).sum(), weights

    def update(self, losses: Mapping[str, torch.Tensor], grad_norms: Mapping[str, torch.Tensor]) -> None:
        """Move the weights by one GradNorm step.

        Args:
            losses: task_name -> this step's loss (detached or not; L_t(0) is recorded on the first call).
            grad_norms: task_name -> || grad_W L_t ||, the UNWEIGHTED norm (see `task_gradient_norms`).
        """
        self._indices(list(losses))
        self._indices(list(grad_norms))
        device = self.task_weights.device
        loss = torch.stack([losses[n].detach().float().reshape(()) for n in self.task_names]).to(device)
        norm = torch.stack([grad_norms[n].detach().float().reshape(()) for n in self.task_names]).to(device)
        initial = torch.where(torch.isnan(self.initial_losses), loss, self.initial_losses)
        self.initial_losses.copy_(initial)
        inverse_rate = loss / initial.clamp_min(1e-12)
        relative = inverse_rate / inverse_rate.mean().clamp_min(1e-12)
        weighted = self.task_weights * norm
        target = weighted.mean() * relative.pow(self.alpha)
        grad = torch.sign(weighted - target) * norm
        self._steps += 1
        _adam_step(self.task_weights, grad, self.exp_avg, self.exp_avg_sq, self._steps, self.lr)
        # renormalise to sum T; the clamp keeps a weight that Adam pushed through 0 positive
        total = self.task_weights.clamp_(min=1e-6).sum()
        self.task_weights.mul_(self.num_tasks / total)

    def _extra_state(self) -> dict[str, Any]:
        return {"steps": self._steps}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._steps = int(state["steps"])
