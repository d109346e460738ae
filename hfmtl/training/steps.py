"""What one optimizer step does: train one sampled task, or every task weighed by a balancing method.

``balancing.step: one_task`` (the default): `gradient_accumulation_steps` micro-batches of the task the
sampler drew; a loss weighting that applies to one task at a time (``fixed``, ``initial_loss``,
``uncertainty``) scales its loss.

``balancing.step: all_tasks``: each micro-step takes one batch of every task (or of a sampled subset,
``tasks_per_step``), computed in ONE forward call of the model (`task_batches`), so that DDP sees one
forward for one backward. Then, by the method's family (hfmtl/balancing/):

- a loss weighting (``equal``, ``dwa``, ``rlw``, ``uncertainty``, ``gradnorm``, ``famo``...) gives the
  weighted loss, and one backward trains everything: cost as one backward over T tasks' batches;
- a gradient method (``pcgrad``, ``cagrad``, ``gradvac``, ``mgda``, ``imtl_g``, ``nash_mtl``,
  ``aligned_mtl``) needs each task's gradient of the SHARED trainable parameters (the encoder; under
  PEFT only its adapters, far fewer): T extra `torch.autograd.grad` passes into a (T, P) float32 matrix,
  averaged over processes (`accelerator.reduce`) so every rank combines the same gradients; then one
  backward of the summed losses gives each head its own task's gradient (and is all-reduced by DDP as
  usual), and the combined gradient replaces the shared parameters' ``.grad`` before clipping and the
  optimizer step. Cost: T + 1 backward passes per micro-step and T x P floats of memory.

An input group (hfmtl/training/input_groups.py) is one unit of a step: its batch carries the rows once
and every task's labels, and one forward gives each of its tasks a loss from one encoder pass. In a
one-task step the balancer weighs those losses (as it weighs an all-tasks step's); in an all-tasks step
they join the other units' losses, and a gradient method takes each task's gradient through the shared
pass like any other.

Strategies compute and never own the loop: here, in `StepRunner`, are the backward passes, the
all-reduces and the writes into ``.grad``. Their state is checkpointed with the run (exact resume).

Every task loss of a step goes past the `NonfiniteGuard` (nonfinite.py), which decides at the optimizer
step, after the last backward and before anything is applied: a NaN or infinite loss stops the run
(``train.nonfinite: error``), or (``skip``) the step is dropped on every process: no optimizer, scheduler,
AdaLoRA or balancing update, the balancer's state put back as it was before the step, and the step's
losses left out of the loss log.

Example:
    >>> runner = StepRunner(model=model, optimizer=optimizer, scheduler=scheduler,        # doctest: +SKIP
    ...                     accelerator=accelerator, args=config.train, balancing=config.balancing,
    ...                     balancer=build_balancer(config.balancing, ["rte", "stsb"], seed=0),
    ...                     batches=task_batches, record_losses=loss_log.record)
    >>> runner.step(["rte"], step_index=0)                                                # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

import torch
from accelerate import Accelerator

from ..balancing import Balancer, GradientCombiner, balancer_options, get_balancer
from ..balancing.gradnorm import task_gradient_norms
from ..config import BalancingConfig, TrainConfig
from ..model.adapters import update_adalora_budget
from ..model.backbone import encoder_layer_groups
from ..model.freezing import GradualUnfreezer
from .nonfinite import NonfiniteGuard
from .zero3 import clear_unused_gradients

logger = logging.getLogger("hfmtl")


class BatchSource(Protocol):
    """Where a step takes each task's next batch from (`hfmtl.training.batches.TaskBatches`)."""

    def next(self, task_name: str) -> dict[str, torch.Tensor]: ...


def build_balancer(balancing: BalancingConfig, task_names: list[str], seed: int) -> Balancer | None:
    """The run's balancing strategy; None for one task per step, unweighted (the default).

    Built before the optimizer: a weighting that learns (uncertainty) trains its parameters with it.
    """
    if balancing.step == "one_task" and balancing.method == "equal":
        return None
    options = dict(balancing.options)
    if "seed" in balancer_options(balancing.method):
        options.setdefault("seed", seed)
    balancer = get_balancer(balancing.method, task_names, **options)
    logger.info("balancing: %s, %s per step %s", balancing.method, balancing.step.replace("_", " "), options or "")
    return balancer


class StepRunner:
    """Does one optimizer step, and owns the balancing state it needs between steps.

    Args:
        model: the prepared `MultiTaskModel`.
        optimizer: the prepared optimizer (with the balancer's learned parameters, if it has any).
        scheduler: the learning-rate scheduler, stepped once per optimizer step.
        accelerator: the run's Accelerator.
        args: the train config (``gradient_accumulation_steps``, ``max_grad_norm``).
        balancing: the balancing config (``step``: one task or all tasks per step).
        balancer: from `build_balancer` (None: unweighted).
        batches: each task's next batch (`TaskBatches`).
        record_losses: called with each micro-batch's ``{task_name: loss}`` (`LossLog.record`).
        unfreezer: the gradual unfreezing schedule, if any.
        groups: unit name -> its tasks (`TrainingUnits.members`, input_groups.py): a step names units, and an
            input group's batch gives every task of the group its loss from one encoder pass. None: each
            task is its own unit.

    Attributes:
        balancer: the strategy (None: unweighted); ``balancer_params``: its learned parameters;
        shared_params: the shared trainable parameters (the encoder's; only its adapters under PEFT);
        gradnorm_params: GradNorm's last shared layer; last_weights: the latest task weights (logged);
        guard: the non-finite loss guard (``train.nonfinite``); skipped_steps: the steps it skipped.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        accelerator: Accelerator,
        args: TrainConfig,
        balancing: BalancingConfig,
        balancer: Balancer | None,
        batches: BatchSource,
        record_losses: Callable[[dict[str, torch.Tensor]], None],
        unfreezer: GradualUnfreezer | None = None,
        groups: Mapping[str, list[str]] | None = None,
    ):
        self.model, self.optimizer, self.scheduler, self.accelerator = model, optimizer, scheduler, accelerator
        self.accumulation, self.max_grad_norm = args.gradient_accumulation_steps, args.max_grad_norm
        self.all_tasks = balancing.step == "all_tasks"
        self.batches, self.record_losses, self.unfreezer = batches, record_losses, unfreezer
        self.balancer = balancer
        self.groups = {unit: names for unit, names in (groups or {}).items() if names != [unit]}
        self.balancer_params: list[torch.nn.Parameter] = list(balancer.parameters()) if balancer is not None else []
        encoder = accelerator.unwrap_model(model, keep_torch_compile=False).encoder
        self.shared_params = [p for p in encoder.parameters() if p.requires_grad]
        self.gradnorm_params: list[torch.nn.Parameter] = []
        if balancer is not None and balancer.name == "gradnorm":  # it balances gradient norms at the top layer
            self.gradnorm_params = [p for p in encoder_layer_groups(encoder)[-1] if p.requires_grad]
        self.last_weights: dict[str, torch.Tensor] = {}
        self.guard = NonfiniteGuard(accelerator, args.nonfinite)
        self._before_step: tuple[dict, dict] | None = None  # the balancer's state, for a skipped step
        self._pending_losses: list[dict[str, torch.Tensor]] = []  # the step's, logged once it is applied
        self._skipped = False

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for a non-finite loss (``train.nonfinite: skip``)."""
        return self.guard.skipped_steps

    def step(self, units: list[str], step_index: int) -> None:
        """One optimizer step on `units` (one sampled task or input group; with ``balancing.step:
        all_tasks``, those of the step). `step_index`: the steps taken before it (the schedules of gradual
        unfreezing and AdaLoRA count from 0).

        Raises:
            TrainingError: a loss of the step is NaN or infinite (with ``train.nonfinite: error``).
        """
        task_names = [name for unit in units for name in self.groups.get(unit, [unit])]
        self.guard.start(task_names)
        self._pending_losses, self._skipped = [], False
        if self.guard.skips and self.balancer is not None:
            # a weighting updates its state as it weighs (first losses, loss history): a skipped step
            # puts it back. A copy per step, of a few small tensors, only with `skip` and a balancer.
            self._before_step = (copy.deepcopy(self.balancer.state_dict()), dict(self.last_weights))
        if self.all_tasks:
            self._all_tasks_step(units, task_names, step_index)
        else:
            (unit,) = units
            self._one_task_step(unit, step_index)
        if not self._skipped:
            for losses in self._pending_losses:
                self.record_losses(losses)

    def _one_task_step(self, unit: str, step_index: int) -> None:
        """`gradient_accumulation_steps` micro-batches of one task (or one input group: every task of it on
        one encoder pass, their losses weighed by the balancer), then the optimizer step."""
        acc = self.accelerator
        for _ in range(self.accumulation):
            batch = self.batches.next(unit)
            with acc.accumulate(self.model):
                if unit in self.groups:
                    losses = self.model(**batch).task_losses
                else:
                    losses = {unit: self.model(task=unit, **batch).loss}
                self.guard.observe(losses)
                acc.backward(self._weighted_total(losses))
                applied = self._step_is_finite(step_index)
                self._finish_micro_step(step_index, applied)
            self._pending_losses.append({name: loss.detach() for name, loss in losses.items()})

    def _all_tasks_step(self, units: list[str], task_names: list[str], step_index: int) -> None:
        """One batch of every unit in `units` per micro-step (an input group's gives each of its tasks a loss
        from one encoder pass), the losses of `task_names` weighed or combined by the balancer."""
        acc, balancer = self.accelerator, self.balancer
        combiner = isinstance(balancer, GradientCombiner)
        task_grads = None
        for _ in range(self.accumulation):
            batches = {unit: self.batches.next(unit) for unit in units}
            with acc.accumulate(self.model):
                losses = self.model(task_batches=batches).task_losses
                self.guard.observe(losses)
                if combiner:
                    micro = _shared_gradients(losses, task_names, self.shared_params, scale=1.0 / self.accumulation)
                    task_grads = micro if task_grads is None else task_grads.add_(micro)
                    # each head gets its own task's gradient; the shared parameters' part is replaced below
                    total = sum(losses.values())
                else:
                    if balancer.name == "gradnorm":
                        norms = task_gradient_norms(losses, self.gradnorm_params)
                    total = self._weighted_total(losses)
                acc.backward(total)
                applied = self._step_is_finite(step_index)
                if acc.sync_gradients and applied and combiner:
                    task_grads = acc.reduce(task_grads, reduction="mean")  # every rank combines the same matrix
                    combined = balancer(task_grads, task_names)
                    self.last_weights = dict(zip(task_names, combined.weights))
                    _write_shared_gradient(self.shared_params, combined.grad)
                if acc.sync_gradients and applied and balancer.name == "gradnorm":
                    balancer.update(_mean(acc, losses), _mean(acc, norms))
                self._finish_micro_step(step_index, applied)
                if acc.sync_gradients and applied and balancer.name == "famo":
                    # FAMO learns from how much each loss fell: the same batches again after the step
                    with torch.no_grad():
                        after = self.model(task_batches=batches).task_losses
                    balancer.update(_mean(acc, losses), _mean(acc, after))
            self._pending_losses.append({name: loss.detach() for name, loss in losses.items()})

    def _weighted_total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss to backpropagate: the balancer's weighting of this process's task losses.

        A weighting that learns parameters (uncertainty) needs the graph through them and is applied as
        is (its gradients are averaged over processes later). Every other one is fed the losses averaged
        over processes, so that its state (initial losses, loss history, random draws) stays the same on
        every rank, and its weights are applied to this process's losses.
        """
        if self.balancer is None:
            return sum(losses.values())
        if self.balancer_params:
            out = self.balancer(losses)
            self.last_weights = out.weights
            return out.loss
        weights = self.balancer(_mean(self.accelerator, losses)).weights
        self.last_weights = weights
        return sum(weights[name].to(loss.dtype) * loss for name, loss in losses.items())

    def _step_is_finite(self, step_index: int) -> bool:
        """At the optimizer step (a sync), the guard's decision; between syncs, True. A skipped step's
        balancer state is put back and its losses are not logged."""
        if not self.accelerator.sync_gradients or self.guard.step_is_finite(step_index):
            return True
        if self._before_step is not None:
            state, self.last_weights = self._before_step
            self.balancer.load_state_dict(state)
        self._skipped = True
        return False

    def _finish_micro_step(self, step_index: int, applied: bool = True) -> None:
        """Unfreeze schedule, balancer gradients, clipping, optimizer and scheduler steps (at a sync);
        a skipped step (`applied` false) only drops its gradients, on every process alike."""
        acc = self.accelerator
        if not applied:
            self.optimizer.zero_grad(set_to_none=True)
            return
        if acc.sync_gradients:
            if self.unfreezer is not None:
                self.unfreezer.drop_frozen_grads(step_index)
            # a learned loss weighting (uncertainty) lives outside the DDP-wrapped model: average by hand
            for param in self.balancer_params:
                if param.grad is not None and acc.num_processes > 1:
                    param.grad = acc.reduce(param.grad, reduction="mean")
            if self.max_grad_norm:
                acc.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        if acc.sync_gradients:  # AdaLoRA re-allocates its ranks from this step's gradients
            update_adalora_budget(acc.unwrap_model(self.model, keep_torch_compile=False), step_index)
        if acc.sync_gradients and not acc.optimizer_step_was_skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        clear_unused_gradients(acc, self.model)  # ZeRO-3 would apply an unused head's old gradient again


def _shared_gradients(
    losses: dict[str, torch.Tensor],
    task_names: list[str],
    params: list[torch.nn.Parameter],
    scale: float = 1.0,
) -> torch.Tensor:
    """(T, P) float32: each task's gradient of the shared parameters, flattened and multiplied by
    `scale` (``.grad`` untouched).

    Each gradient is copied once, straight into its slice of one preallocated matrix: with the full
    encoder shared, P is tens of millions, and building rows with `cat` then `stack` (two copies) and
    scaling in a separate pass costs a visible share of a gradient method's step (docs/benchmarks.md
    has the profile, benchmarks/profile_loop.py measures it).
    """
    sizes = [p.numel() for p in params]
    matrix = torch.empty(len(task_names), sum(sizes), dtype=torch.float32, device=params[0].device)
    for row, name in zip(matrix, task_names):
        grads = torch.autograd.grad(losses[name], params, retain_graph=True, allow_unused=True)
        for piece, grad in zip(row.split(sizes), grads):
            if grad is None:  # the parameter took no part in this task's loss
                piece.zero_()
            else:
                piece.copy_(grad.reshape(-1))
        if scale != 1.0:
            row.mul_(scale)
    return matrix


def _write_shared_gradient(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    offset = 0
    for param in params:
        size = param.numel()
        param.grad = flat[offset : offset + size].view_as(param).to(param.dtype)
        offset += size


def _mean(acc, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-task values averaged over processes (detached), so every rank's strategy state stays equal."""
    names = list(values)
    stacked = torch.stack([values[n].detach().float() for n in names])
    stacked = acc.reduce(stacked, reduction="mean") if acc.num_processes > 1 else stacked
    return dict(zip(names, stacked))
