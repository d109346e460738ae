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

Strategies compute and never own the loop: here are the backward passes, the all-reduces
and the writes into ``.grad``. Their state is checkpointed with the run (exact resume).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from ..balancing import GradientCombiner, balancer_options, get_balancer
from ..balancing.gradnorm import task_gradient_norms
from ..model.adapters import update_adalora_budget
from ..model.backbone import encoder_layer_groups

if TYPE_CHECKING:
    from .trainer import MultiTaskTrainer

logger = logging.getLogger("hfmtl")


def step_tasks(trainer: MultiTaskTrainer, step: int) -> list[str]:
    """The tasks of an all-tasks step: every task, or `tasks_per_step` of them drawn with the
    sampler's probabilities from a generator seeded by the step (the same on every process and
    after a resume, with no state to save)."""
    names = list(trainer.tasks)
    k = trainer.config.balancing.tasks_per_step
    if k is None or k >= len(names):
        return names
    probabilities = torch.tensor([trainer.sampler.probabilities()[n] for n in names])
    generator = torch.Generator().manual_seed(trainer.args.seed * 1_000_003 + step)
    chosen = torch.multinomial(probabilities, k, replacement=False, generator=generator)
    return [names[i] for i in sorted(chosen.tolist())]


def setup_balancing(trainer: MultiTaskTrainer, model) -> None:
    """The trainer's balancing strategy (None: one task per step, unweighted), and what it trains on."""
    b = trainer.config.balancing
    trainer.balancer = None
    trainer.balancer_params: list[torch.nn.Parameter] = []
    trainer.last_weights: dict[str, torch.Tensor] = {}
    # the shared trainable parameters: the encoder's (only its adapters under PEFT)
    trainer.shared_params = [p for p in model.encoder.parameters() if p.requires_grad]
    trainer.gradnorm_params: list[torch.nn.Parameter] = []
    if b.step == "one_task" and b.method == "equal":
        return
    options = dict(b.options)
    if "seed" in balancer_options(b.method):
        options.setdefault("seed", trainer.args.seed)
    trainer.balancer = get_balancer(b.method, list(trainer.tasks), **options)
    trainer.balancer_params = list(trainer.balancer.parameters())
    if b.method == "gradnorm":  # GradNorm balances gradient norms at the last shared layer
        top = encoder_layer_groups(model.encoder)[-1]
        trainer.gradnorm_params = [p for p in top if p.requires_grad]
    logger.info("balancing: %s, %s per step %s", b.method, b.step.replace("_", " "), options or "")


def one_task_step(trainer: MultiTaskTrainer, task_name: str) -> None:
    """`gradient_accumulation_steps` micro-batches of one task, then the optimizer step."""
    acc, args = trainer.accelerator, trainer.args
    for _ in range(args.gradient_accumulation_steps):
        batch = trainer._next_batch(task_name)
        with acc.accumulate(trainer.model):
            loss = trainer.model(task=task_name, **batch).loss
            acc.backward(_weighted_total(trainer, {task_name: loss}))
            _finish_micro_step(trainer)
        trainer._record_losses({task_name: loss})


def all_tasks_step(trainer: MultiTaskTrainer, task_names: list[str]) -> None:
    """One batch of every task in `task_names` per micro-step, weighed or combined by the balancer."""
    acc, args, balancer = trainer.accelerator, trainer.args, trainer.balancer
    accumulation = args.gradient_accumulation_steps
    combiner = isinstance(balancer, GradientCombiner)
    task_grads = None
    for _ in range(accumulation):
        batches = {name: trainer._next_batch(name) for name in task_names}
        with acc.accumulate(trainer.model):
            losses = trainer.model(task_batches=batches).task_losses
            if combiner:
                micro = _shared_gradients(losses, task_names, trainer.shared_params, scale=1.0 / accumulation)
                task_grads = micro if task_grads is None else task_grads.add_(micro)
                # each head gets its own task's gradient; the shared parameters' part is replaced below
                total = sum(losses.values())
            else:
                if balancer.name == "gradnorm":
                    norms = task_gradient_norms(losses, trainer.gradnorm_params)
                total = _weighted_total(trainer, losses)
            acc.backward(total)
            if acc.sync_gradients and combiner:
                task_grads = acc.reduce(task_grads, reduction="mean")  # every rank combines the same matrix
                combined = balancer(task_grads, task_names)
                trainer.last_weights = dict(zip(task_names, combined.weights))
                _write_shared_gradient(trainer.shared_params, combined.grad)
            if acc.sync_gradients and balancer.name == "gradnorm":
                balancer.update(_mean(acc, losses), _mean(acc, norms))
            _finish_micro_step(trainer)
            if acc.sync_gradients and balancer.name == "famo":
                # FAMO learns from how much each loss fell: the same batches again after the step
                with torch.no_grad():
                    after = trainer.model(task_batches=batches).task_losses
                balancer.update(_mean(acc, losses), _mean(acc, after))
        trainer._record_losses(losses)


def _weighted_total(trainer: MultiTaskTrainer, losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss to backpropagate: the balancer's weighting of this process's task losses.

    A weighting that learns parameters (uncertainty) needs the graph through them and is applied as is
    (its gradients are averaged over processes later). Every other one is fed the losses averaged over
    processes, so that its state (initial losses, loss history, random draws) stays the same on every
    rank, and its weights are applied to this process's losses.
    """
    balancer = trainer.balancer
    if balancer is None:
        return sum(losses.values())
    if trainer.balancer_params:
        out = balancer(losses)
        trainer.last_weights = out.weights
        return out.loss
    weights = balancer(_mean(trainer.accelerator, losses)).weights
    trainer.last_weights = weights
    return sum(weights[name].to(loss.dtype) * loss for name, loss in losses.items())


def _finish_micro_step(trainer: MultiTaskTrainer) -> None:
    """Unfreeze schedule, balancer gradients, clipping, optimizer and scheduler steps (at a sync)."""
    acc, args = trainer.accelerator, trainer.args
    if acc.sync_gradients:
        if trainer.unfreezer is not None:
            trainer.unfreezer.drop_frozen_grads(trainer.state.global_step)
        # a learned loss weighting (uncertainty) lives outside the DDP-wrapped model: average by hand
        for param in trainer.balancer_params:
            if param.grad is not None and acc.num_processes > 1:
                param.grad = acc.reduce(param.grad, reduction="mean")
        if args.max_grad_norm:
            acc.clip_grad_norm_(trainer.model.parameters(), args.max_grad_norm)
    trainer.optimizer.step()
    if acc.sync_gradients:  # AdaLoRA re-allocates its ranks from this step's gradients
        update_adalora_budget(trainer.unwrapped_model(), trainer.state.global_step)
    if acc.sync_gradients and not acc.optimizer_step_was_skipped:
        trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def _shared_gradients(
    losses: dict[str, torch.Tensor],
    task_names: list[str],
    params: list[torch.nn.Parameter],
    scale: float = 1.0,
) -> torch.Tensor:
    """(T, P) float32: each task's gradient of the shared parameters, flattened and multiplied by
    `scale` (``.grad`` untouched).

    Each gradient is copied once, straight into its slice of one preallocated matrix. With the full
    encoder shared, P is tens of millions: building rows with `cat` then `stack` (two copies) and
    scaling in a separate pass made this gathering, with the method's own work, 18% of a PCGrad step on
    MiniLM; one copy halved that (benchmarks/profile_loop.py, docs/benchmarks.md).
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
