"""The guard against a training loss that is NaN or infinite (``train.nonfinite``).

One such loss, back-propagated and applied, makes every weight NaN: the run would go on and save a
model that predicts nothing, with exit status 0. The guard watches each task's loss of an optimizer step
on the device and decides once, before the step changes anything: ``error`` stops the run with a
`TrainingError` naming the task and the step; ``skip`` tells the step runner (steps.py) to drop the step.

Cost: per micro-batch, a few device operations on the step's losses (no host sync); per optimizer step,
one all-reduce of a (2, tasks-of-the-step) tensor when there are several processes, and one
device-to-host read. Every process reads the reduced counts, so a NaN on one rank stops or skips the step
on all of them alike, and no rank is left waiting in a collective the others never reach.

Example:
    >>> guard = NonfiniteGuard(accelerator, mode="skip")                     # doctest: +SKIP
    >>> guard.start(["rte"]); guard.observe({"rte": loss})                   # doctest: +SKIP
    >>> guard.step_is_finite(step_index=0)  # at the optimizer step          # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from ..errors import ConfigError, TrainingError

logger = logging.getLogger("hfmtl")


class NonfiniteGuard:
    """Counts each task's NaN and infinite losses over the micro-batches of one optimizer step.

    Args:
        accelerator: the run's Accelerator (device, processes).
        mode: ``error`` or ``skip`` (``train.nonfinite``).

    Attributes:
        skipped_steps: the optimizer steps skipped so far (``skip`` only).

    Raises:
        ConfigError: ``skip`` under DeepSpeed, whose engine steps the optimizer inside the backward pass,
            before the guard can decide.
    """

    def __init__(self, accelerator: Accelerator, mode: str):
        if mode == "skip" and accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise ConfigError(
                "train.nonfinite=skip cannot apply under DeepSpeed (its engine steps the optimizer inside the "
                "backward pass, before the losses are checked); use train.nonfinite=error"
            )
        self.accelerator, self.mode = accelerator, mode
        self.skipped_steps = 0
        self._task_names: list[str] = []
        self._counts = torch.zeros(2, 0, device=accelerator.device)  # rows: NaN, inf; a column per task

    @property
    def skips(self) -> bool:
        """Whether a non-finite step is skipped (else it stops the run)."""
        return self.mode == "skip"

    def start(self, task_names: list[str]) -> None:
        """A new optimizer step on `task_names` begins."""
        self._task_names = list(task_names)
        self._counts = torch.zeros(2, len(task_names), device=self.accelerator.device)

    def observe(self, losses: dict[str, torch.Tensor]) -> None:
        """Count the non-finite values among one micro-batch's task losses (on the device, no sync)."""
        values = torch.stack([losses[name].detach().float().reshape(()) for name in self._task_names])
        self._counts[0] += torch.isnan(values)
        self._counts[1] += torch.isinf(values)

    def step_is_finite(self, step_index: int) -> bool:
        """Whether every loss of the step was finite, on every process. Call it on every process at the
        optimizer step, after the last backward and before anything is applied.

        Raises:
            TrainingError: a loss was not finite and the mode is ``error``.
        """
        counts = self._counts
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        nans, infs = counts.tolist()  # the one device-to-host read of the step
        bad = [(name, "nan" if n else "inf") for name, n, i in zip(self._task_names, nans, infs) if n or i]
        if not bad:
            return True
        (task_name, value), others = bad[0], "".join(f"; task {n!r}'s too ({v})" for n, v in bad[1:])
        step = step_index + 1
        if not self.skips:
            raise TrainingError(
                f"task {task_name!r}: the training loss is {value} at optimizer step {step}{others}; the run stops "
                "before anything of it is saved. Look for extreme values in its data, lower train.learning_rate, "
                "or set train.nonfinite=skip to skip such steps"
            )
        self.skipped_steps += 1
        logger.warning(
            "step %d: task %r's training loss is %s%s: optimizer step skipped (train.nonfinite=skip); "
            "%d steps skipped so far",
            step,
            task_name,
            value,
            others,
            self.skipped_steps,
        )
        return False
