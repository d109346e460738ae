"""Each task's stream of training batches, and where it stands (for an exact resume).

Tasks are drawn at random, so each task's loader is consumed at its own pace: one iterator per task,
opened lazily, and a new reshuffled pass over the task's data when it runs out (a task never runs dry).
Its position -- which pass, and how many batches of it were used -- is saved in every checkpoint
(`TrainingState`, checkpointing.py); a resumed run reopens each task's loader in the same pass and skips
the used batches by index (`Accelerator.skip_first_batches`: no collation of what is skipped).

A streaming task (hfmtl/training/streaming.py) has no index to skip by: its position also holds
``stream``, the `datasets.IterableDataset`'s own `state_dict()` after the last batch it gave, and a
resumed run hands it back to `load_state_dict` so the stream continues at the next example. Its pass is
one read of the stream to its end (``epoch`` counts them, ``batches`` counts this pass's batches), and
`IterableDataset.set_epoch` is told the pass: a saved state applies only to the pass it was saved in.

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
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader

from .data import EpochSampler
from .streaming import is_stream, own_position, positions_of_every_process


class TaskBatches:
    """Per-task batch iterators with their resume positions.

    Args:
        loaders: task_name -> its training DataLoader, prepared by the Accelerator; a streaming task's
            as `build_stream_loader` made it (over a `datasets.IterableDataset`, not prepared).
        samplers: task_name -> the `EpochSampler` of an in-memory task's loader (before `prepare` wrapped
            it): each pass is reshuffled by telling it the pass number.
        accelerator: the run's Accelerator (skips the used batches on a resume; the device of a stream's batches).
    """

    def __init__(
        self, loaders: Mapping[str, DataLoader], samplers: Mapping[str, EpochSampler], accelerator: Accelerator
    ):
        self.loaders, self.samplers, self.accelerator = dict(loaders), dict(samplers), accelerator
        self.streams = {name: loader.dataset for name, loader in self.loaders.items() if is_stream(loader.dataset)}
        # per task: which pass over its data, and how many of its batches this pass has used (and where a
        # stream stands: its own state_dict)
        self.positions = {name: self._pass_start(name, 0) for name in self.loaders}
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
            position = self.positions[task_name] = self._pass_start(task_name, position["epoch"] + 1)
            iterator = self._iterators[task_name] = self._start_pass(task_name, position)
            batch = next(iterator)
        position["batches"] += 1
        if task_name in self.streams:  # what the stream yielded so far, by its own account
            position["stream"] = self.streams[task_name].state_dict()
            batch = send_to_device(batch, self.accelerator.device)
        return batch

    def saved_positions(self) -> dict[str, dict[str, Any]]:
        """The positions as a checkpoint keeps them: under DDP a stream's holds every process's own
        (`positions_of_every_process`). Call on every process."""
        return positions_of_every_process(self.positions, list(self.streams), self.accelerator)

    def load_positions(self, positions: Mapping[str, Mapping[str, Any]]) -> None:
        """Continue from saved positions: every task's pass reopens at its next batch."""
        index = self.accelerator.process_index
        self.positions = {name: own_position(position, index) for name, position in positions.items()}
        self._iterators.clear()

    def _pass_start(self, task_name: str, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "batches": 0, **({"stream": None} if task_name in self.streams else {})}

    def _start_pass(self, task_name: str, position: dict[str, Any]) -> Iterator:
        if task_name in self.streams:
            stream = self.streams[task_name]
            stream.set_epoch(position["epoch"])
            if position["stream"] is not None:  # resuming mid-pass: the stream continues where it stood
                stream.load_state_dict(position["stream"])
            return iter(self.loaders[task_name])
        self.samplers[task_name].use_epoch(position["epoch"])
        loader = self.loaders[task_name]
        if position["batches"]:  # resuming mid-pass: skip what was used (indices only, no collation)
            loader = self.accelerator.skip_first_batches(loader, position["batches"])
        return iter(loader)
