"""Loss weightings: fixed or rule-based weights on the task losses (no gradient information needed).

All of them accept any non-empty subset of the tasks at a step (the others are skipped) and cost
nothing beyond the weighted sum. Weights follow one scale convention: weights of 1 are plain summed
losses (what the trainer does without balancing), so a learning rate tuned without balancing stays
sensible; methods whose papers normalise weights do it to "sum = number of tasks of the step".
Note that with one task per step (the trainer's default loop), only `fixed`, `initial_loss` and
`uncertainty` change anything: the others need several tasks in a step to re-weight between them.

- ``equal``: L = sum_t L_t.
- ``fixed``: L = sum_t w_t L_t with the given weights.
- ``initial_loss``: L = sum_t L_t / L_t(first step the task was seen) — every task starts at 1.
- ``rlw``: random loss weighting, weights T' * softmax(eps), eps ~ N(0, I) each step (T' tasks present).
- ``uncertainty``: homoscedastic-uncertainty weighting with learned log-variances.
- ``dwa``: dynamic weight average from the loss ratios of the last two windows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .base import LossWeighting, _check_number, _check_task_weights
from .registry import register_balancer


@register_balancer("equal")
class EqualWeighting(LossWeighting):
    """Plain sum of the task losses (every weight 1): the baseline every other strategy is compared to.

    Args:
        task_names: the run's tasks.
        seed: unused (kept for a uniform constructor).
    """

    def _combine(self, names, indices, losses):
        return losses.sum(), torch.ones_like(losses)


@register_balancer("fixed")
class FixedWeighting(LossWeighting):
    """Sum of the task losses with user-given constant weights.

    Args:
        task_names: the run's tasks.
        weights: task_name -> non-negative weight; one for every task.
        seed: unused.

    Example:
        >>> from hfmtl.balancing import get_balancer
        >>> fixed = get_balancer("fixed", ["a", "b"], weights={"a": 2.0, "b": 0.5})
        >>> float(fixed({"a": torch.tensor(1.0), "b": torch.tensor(4.0)}).loss)
        4.0
    """

    def __init__(self, task_names: Sequence[str], weights: Mapping[str, float], seed: int = 0):
        super().__init__(task_names, seed)
        values = _check_task_weights(self.name, "weights", weights, self.task_names)
        self.register_buffer("task_weights", torch.tensor(values, dtype=torch.float32))

    def _combine(self, names, indices, losses):
        weights = self.task_weights[indices].to(losses.device)
        return (weights * losses).sum(), weights


@register_balancer("initial_loss")
class InitialLossNormalization(LossWeighting):
    """Each task's loss divided by the first loss observed for that task: L = sum_t L_t / L_t(0).

    Puts tasks whose losses live on different scales (a 9-way cross-entropy ~2.2, an MSE on a 0-5 scale
    ~5) on the same footing: every task starts at 1. L_t(0) is the detached loss of the first step that
    contains task t, kept in the state dict. Under several processes, the trainer must pass the loss
    averaged over processes, or each process divides by its own first loss.

    Args:
        task_names: the run's tasks.
        seed: unused.
    """

    _EPS = 1e-8  # a first loss of exactly 0 gives a weight of 1e8, not a division by zero

    def __init__(self, task_names: Sequence[str], seed: int = 0):
        super().__init__(task_names, seed)
        self.register_buffer("initial_losses", torch.full((self.num_tasks,), float("nan")))

    def _combine(self, names, indices, losses):
        index = torch.tensor(indices, device=self.initial_losses.device)
        known = self.initial_losses[index]
        # torch.where, not an `if`: no host sync to ask whether a task is new
        initial = torch.where(torch.isnan(known), losses.detach().to(known.device), known)
        self.initial_losses.index_copy_(0, index, initial)
        weights = 1.0 / initial.clamp_min(self._EPS).to(losses.device)
        return (weights * losses).sum(), weights


@register_balancer("rlw")
class RandomLossWeighting(LossWeighting):
    """Random loss weighting (Lin et al. 2021, "Reasonable Effectiveness of Random Weighting: A Litmus
    Test for Multi-Task Learning", RLW with the normal distribution).

    Each step draws eps ~ N(0, I) for the T' tasks present and uses weights T' * softmax(eps). The
    paper's weights are softmax(eps) (sum 1); the factor T' puts them on the scale of ``equal``
    (sum T', mean 1), a constant factor on the step size. Samples come from the strategy's seeded
    generator on the CPU, in `task_names` order, so a run (and a resumed run) draws the same weights.

    Args:
        task_names: the run's tasks.
        seed: seeds the weight samples.
    """

    def _combine(self, names, indices, losses):
        sample = torch.randn(len(names), generator=self.generator)
        weights = (len(names) * torch.softmax(sample, dim=0)).to(losses.device)
        return (weights * losses).sum(), weights


@register_balancer("uncertainty")
class UncertaintyWeighting(LossWeighting):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla 2018, "Multi-Task Learning Using
    Uncertainty to Weigh Losses for Scene Geometry and Semantics").

    Learns one log-variance s_t = log sigma_t^2 per task and minimises, with the model,

        L = sum_t exp(-s_t) * L_t + s_t

    This is the form used in practice for both regression and classification: for a Gaussian likelihood
    the paper's 1/(2 sigma^2) L + log sigma is exactly half of it (same minimiser), and for a softmax
    likelihood the paper's 1/sigma^2 L + log sigma is its approximation up to the factor on the
    regulariser. For fixed L_t the optimum is s_t = log L_t: a task with an MSE loss learns the log of its
    noise variance, and noisier tasks get the smaller weight exp(-s_t).

    The log-variances are `parameters()`: the trainer must add them to its optimizer, in a group with
    ``weight_decay=0`` (decay would pull every sigma towards 1) and learning rate `lr`. Their own rate,
    because an encoder's fine-tuning rate is far too small for them: Adam moves a parameter by about its
    learning rate per step, so at 8e-5 each s_t moves less than 0.02 in 200 steps and the weights stay
    at 1 (docs/balancing.md has the GLUE run that showed it), while the
    optimum s_t = log L_t is often 1 or 2 away from 0. They are not part of the
    DDP-wrapped model: under several processes their gradients must be all-reduced like the model's.
    One parameter per task, so a task absent from a step gets no gradient (``grad`` stays None).

    Args:
        task_names: the run's tasks.
        init_log_variance: the initial s_t (0: weights start at 1).
        lr: the log-variances' learning rate (the run's schedule scales it like the model's).
        seed: unused.

    Example:
        >>> from hfmtl.balancing import get_balancer
        >>> uw = get_balancer("uncertainty", ["a", "b"])
        >>> float(uw({"a": torch.tensor(2.0), "b": torch.tensor(1.0)}).loss.detach())  # exp(0) * (2 + 1) + 0
        3.0
    """

    def __init__(self, task_names: Sequence[str], init_log_variance: float = 0.0, lr: float = 1e-2, seed: int = 0):
        super().__init__(task_names, seed)
        init = _check_number(self.name, "init_log_variance", init_log_variance, low=-20.0, high=20.0)
        self.lr = _check_number(self.name, "lr", lr, low=0.0)
        self.log_variances = nn.ParameterDict({n: nn.Parameter(torch.tensor(init)) for n in self.task_names})

    def _combine(self, names, indices, losses):
        s = torch.stack([self.log_variances[n] for n in names]).to(losses.device)
        weights = torch.exp(-s)
        return (weights * losses + s).sum(), weights


@register_balancer("dwa")
class DynamicWeightAverage(LossWeighting):
    """Dynamic weight average (Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning with
    Attention", section 3.3).

    With L_t(k) the average loss of task t over window k (an epoch in the paper),
    r_t = L_t(k-1) / L_t(k-2) and temperature T, the weights of window k are

        w_t = K * exp(r_t / T) / sum_i exp(r_i / T)

    over the K tasks of the step: tasks whose loss falls slower get more weight. Until two windows are
    complete (and for a task without an average in one of the last two windows) r_t = 1, so the first two
    windows train with weights 1, as in the paper.

    Every call records its detached losses into the current window. A window ends after `window_steps`
    calls, or, with ``window_steps=None``, when the trainer calls `end_window()` (e.g. at each epoch);
    ending an empty window does nothing. The history lives in buffers (no host sync per step) and in the
    state dict. Under several processes pass losses averaged over processes.

    Args:
        task_names: the run's tasks.
        temperature: T > 0; larger is closer to equal weights (the paper uses 2).
        window_steps: calls per window; None: windows end only at `end_window()`.
        seed: unused.
    """

    def __init__(
        self, task_names: Sequence[str], temperature: float = 2.0, window_steps: int | None = None, seed: int = 0
    ):
        super().__init__(task_names, seed)
        self.temperature = _check_number(self.name, "temperature", temperature, low=1e-6)
        if window_steps is not None:
            window_steps = int(_check_number(self.name, "window_steps", window_steps, low=1))
        self.window_steps = window_steps
        self.register_buffer("window_sum", torch.zeros(self.num_tasks))
        self.register_buffer("window_count", torch.zeros(self.num_tasks))
        # row 0: the average losses of the window before last, row 1: of the last window (NaN: unknown)
        self.register_buffer("averages", torch.full((2, self.num_tasks), float("nan")))
        self._steps_in_window = 0

    def _combine(self, names, indices, losses):
        index = torch.tensor(indices, device=self.averages.device)
        before_last, last = self.averages[0, index], self.averages[1, index]
        ratio = last / before_last
        ratio = torch.where(torch.isfinite(ratio) & (before_last > 0), ratio, torch.ones_like(ratio))
        weights = (len(names) * torch.softmax(ratio / self.temperature, dim=0)).to(losses.device)
        self.window_sum.index_add_(0, index, losses.detach().to(index.device))
        self.window_count.index_add_(0, index, torch.ones_like(ratio))
        self._steps_in_window += 1
        if self.window_steps is not None and self._steps_in_window >= self.window_steps:
            self.end_window()
        return (weights * losses).sum(), weights

    def end_window(self) -> None:
        """Close the current window: its average losses become the newest entry of the history."""
        if self._steps_in_window == 0:
            return
        average = torch.where(self.window_count > 0, self.window_sum / self.window_count.clamp_min(1), float("nan"))
        self.averages[0] = self.averages[1].clone()
        self.averages[1] = average
        self.window_sum.zero_()
        self.window_count.zero_()
        self._steps_in_window = 0

    def _extra_state(self) -> dict[str, Any]:
        return {"steps_in_window": self._steps_in_window}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self._steps_in_window = int(state["steps_in_window"])
