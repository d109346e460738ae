"""The training losses of each task between two logging steps, and the log line that reports them.

The step records each micro-batch's loss into a device tensor (no host sync per step: on a GPU a
``float(loss)`` per step would stall the queue); `LossLog.log` averages them over the window and over
every process, once per ``train.logging_steps``, and reports them with the balancing weights and the
learning rate as ``train/<task>/loss``, ``train/<task>/weight`` and ``train/learning_rate``.

Example:
    >>> log = LossLog(["rte", "stsb"], accelerator)                 # doctest: +SKIP
    >>> log.record({"rte": loss})                                    # doctest: +SKIP
    >>> log.log(step=10, weights={}, learning_rate=2e-5)             # doctest: +SKIP
    {'train/rte/loss': 0.69, 'train/learning_rate': 2e-05}
"""

from __future__ import annotations

import logging

import torch
from accelerate import Accelerator

logger = logging.getLogger("hfmtl")


class LossLog:
    """Sums of each task's losses since the last log line, on the device.

    Args:
        task_names: the tasks, in config order.
        accelerator: the run's Accelerator (device, reduction over processes, trackers).
    """

    def __init__(self, task_names: list[str], accelerator: Accelerator):
        self.accelerator = accelerator
        self._index = {name: i for i, name in enumerate(task_names)}
        self._sums = torch.zeros(len(task_names), device=accelerator.device)
        self._counts = torch.zeros(len(task_names), device=accelerator.device)

    def record(self, losses: dict[str, torch.Tensor]) -> None:
        """Add one micro-batch's loss of each task in `losses` (detached)."""
        for task_name, loss in losses.items():
            index = self._index[task_name]
            self._sums[index] += loss.detach().float()
            self._counts[index] += 1

    def log(self, step: int, weights: dict[str, torch.Tensor], learning_rate: float) -> dict[str, float]:
        """Report the window's mean loss of each task that trained in it (over every process), the
        balancing `weights` and the `learning_rate` to the trackers and the log; start a new window.
        Call on every process (the means are a collective)."""
        sums = self.accelerator.reduce(self._sums.clone(), reduction="sum")
        counts = self.accelerator.reduce(self._counts.clone(), reduction="sum")
        self._sums.zero_()
        self._counts.zero_()
        logs = {f"train/{name}/loss": float(sums[i] / counts[i]) for name, i in self._index.items() if counts[i] > 0}
        logs.update({f"train/{name}/weight": float(weight) for name, weight in weights.items()})
        logs["train/learning_rate"] = float(learning_rate)
        self.accelerator.log(logs, step=step)
        logger.info("step %d: %s", step, {k: round(v, 5) for k, v in logs.items()})
        return logs
