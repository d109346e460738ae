"""Each task's stream of training batches, and where it stands (for an exact resume).

Tasks are drawn at random, so each task's loader is consumed at its own pace: one iterator per task,
opened lazily, and a new reshuffled pass over the task's data when it runs out (a task never runs dry).
Its position -- which pass, and how many batches of it were used -- is saved in every checkpoint
(`TrainingState`, checkpointing.py); a resumed run reopens each task's loader in the same pass and skips
the used batches by index (`Accelerator.skip_first_batches`: no collation of what is skipped).

Example:
    >>> batches = TaskBatches(prepared_loaders, samplers, accelerator)  # doctest: +SKIP
    >>> batch = batches.next("rte")                                       # doctest: +SKIP
    >>> batches.positions["rte"]                                          # doctest: +SKIP
    {'epoch': 0, 'batches': 1}
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from .data import EpochSampler


class TaskBatches:
    """Per-task batch iterators with their resume positions.

    Args:
        loaders: task_name -> its training DataLoader, prepared by the Accelerator.
        samplers: task_name -> the `EpochSampler` of that loader (before `prepare` wrapped it): each
            pass is reshuffled by telling it the pass number.
        accelerator: the run's Accelerator (skips the used batches on a resume).
    """

    def __init__(
        self, loaders: Mapping[str, DataLoader], samplers: Mapping[str, EpochSampler], accelerator: Accelerator
    ):
        self.loaders, self.samplers, self.accelerator = dict(loaders), dict(samplers), accelerator
        # per task: which pass over its data, and how many of its batches this pass has used
        self.positions = {name: {"epoch": 0, "batches": 0} for name in self.loaders}
        self._iterators: dict[str, Iterator] = {}

    def next(self, task_name: str) -> dict[str, torch.Tensor]:
        """The task's next batch; at the end of its data, a new reshuffled pass starts."""
        position = self.positions[task_name]
        iterator = self._iterators.get(task_name)
        if iterator is None:
            iterator = self._iterators[task_name] = self._start_pass(task_name, position)
        try:
            batch = next(iterator)
        except StopIteration:
            position["epoch"] += 1
            position["batches"] = 0
            iterator = self._iterators[task_name] = self._start_pass(task_name, position)
            batch = next(iterator)
        position["batches"] += 1
        return batch

    def load_positions(self, positions: Mapping[str, Mapping[str, Any]]) -> None:
        """Continue from saved positions: every task's pass reopens at its next batch."""
        self.positions = {name: dict(position) for name, position in positions.items()}
        self._iterators.clear()

    def _start_pass(self, task_name: str, position: dict[str, int]) -> Iterator:
        self.samplers[task_name].use_epoch(position["epoch"])
        loader = self.loaders[task_name]
        if position["batches"]:  # resuming mid-pass: skip what was used (indices only, no collation)
            loader = self.accelerator.skip_first_batches(loader, position["batches"])
        return iter(loader)
