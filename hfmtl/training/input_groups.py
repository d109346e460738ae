"""Input groups in training: the tasks of a group train on one encoder pass per batch of their rows.

Tasks that read the same rows declare one ``input_group`` (hfmtl/config/input_groups.py checks that they
can). Here each group becomes one *unit* of training, beside the tasks outside any group:

- its rows: the tasks' tokenized training features, checked to be the same rows in the same order (same
  number of rows, same encoder inputs row by row; else one `DataError`), joined into one dataset that
  holds the encoder inputs once and each task's labels (`group_rows`);
- its batches: each task's collation of the same rows, whose inputs agree, so the batch carries them once
  with ``labels = {task: targets}`` (`InputGroup.collate`); the model encodes them once and runs every
  head of the group (hfmtl/model/shared_input.py);
- its draw: the sampler draws units, not tasks. A group's size is its number of rows, counted once: with
  ``proportional`` each row (with all its labels) is drawn about as often as any other task's example,
  ``temperature`` takes that size to the power 1/T, ``uniform`` and ``round_robin`` count the group as
  one, ``weights`` gives it the sum of its tasks' weights, and an epoch sees each row once;
- its step: every task of the group gets its loss from the one pass, weighed by the balancing method
  (steps.py). Evaluation stays per task, and so do the logged losses and metrics.

A unit's training loader is seeded with ``train.seed`` plus the index of its (first) task, so a run
without groups draws exactly the batches it drew before groups existed.

Example:
    >>> units = TrainingUnits(tasks, data, config, batch_sizes)  # doctest: +SKIP
    >>> units.members                                            # doctest: +SKIP
    {'conll': ['ner', 'pos', 'chunk'], 'rte': ['rte']}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import datasets
from torch.utils.data import DataLoader

from ..config import RunConfig, SamplingConfig, TrainConfig
from ..config.input_groups import shareable_tasks, training_units
from ..errors import DataError
from ..tasks import Task
from .data import TaskData, build_eval_loader, build_train_loader
from .sampling import TaskSampler, steps_per_epoch
from .streaming import build_stream_loader, is_stream, train_sizes

logger = logging.getLogger("hfmtl")

_SEPARATOR = "/"  # a group's dataset keeps task t's own column c as "t/c" (task names are identifiers)


class InputGroup:
    """The tasks of one input group, and the collation of their shared rows.

    Args:
        name: the group's name (``input_group``).
        tasks: its tasks, in config order.
    """

    def __init__(self, name: str, tasks: Sequence[Task]):
        self.name, self.tasks = name, list(tasks)

    def collate(self, features: list[dict[str, Any]], tokenizer) -> dict[str, Any]:
        """Rows of `group_rows` -> the encoder inputs once, and ``labels``: task_name -> its targets."""
        inputs, labels = None, {}
        for task in self.tasks:
            prefix = task.name + _SEPARATOR
            own = [
                {
                    **{k: v for k, v in row.items() if _SEPARATOR not in k},
                    **{k[len(prefix) :]: v for k, v in row.items() if k.startswith(prefix)},
                }
                for row in features
            ]
            batch = task.collate(own, tokenizer)
            labels[task.name] = batch.pop("labels")
            inputs = inputs or batch  # the same rows padded the same way for every task: kept once
        return {**inputs, "labels": labels}


def group_rows(group: InputGroup, data: dict[str, TaskData]) -> datasets.Dataset:
    """One dataset of the group's training rows: the encoder inputs (of its first task) and each task's
    other columns as ``task/column``.

    Raises:
        DataError: the tasks' rows differ in number, or a row's encoder inputs differ between tasks.
    """
    first = group.tasks[0]
    base = data[first.name].train
    inputs = [c for c in base.column_names if c in first.model_input_names]
    parts = [base.select_columns(inputs)]
    reference = list(base["input_ids"])
    for task in group.tasks:
        rows = data[task.name].train
        if task is not first:
            _check_same_rows(group.name, first.name, reference, task.name, list(rows["input_ids"]))
        own = [c for c in rows.column_names if c not in task.model_input_names]
        parts.append(rows.select_columns(own).rename_columns({c: f"{task.name}{_SEPARATOR}{c}" for c in own}))
    return datasets.concatenate_datasets(parts, axis=1)


def _check_same_rows(group: str, first: str, reference: list, name: str, ids: list) -> None:
    if len(ids) != len(reference):
        raise DataError(
            f"input group {group!r}: task {name!r} has {len(ids)} training rows and task {first!r} {len(reference)}: "
            "the tasks of a group must read the same rows (check their max_train_samples)"
        )
    for row, (a, b) in enumerate(zip(reference, ids)):
        if a != b:
            raise DataError(
                f"input group {group!r}: training row {row} of task {name!r} is not row {row} of task {first!r} "
                "(their encoder inputs differ): the tasks of a group must read the same rows in the same order"
            )


class TrainingUnits:
    """What the sampler draws and one step trains: each input group, and each task outside any group.

    Args:
        tasks: task_name -> Task, after `setup`.
        data: task_name -> its tokenized `TaskData`.
        config: the run config (its tasks' ``input_group``).
        batch_sizes: task_name -> its per-device train batch size (the same within a group).

    Attributes:
        members: unit name -> its task names, in config order.
        groups: group name -> its `InputGroup` (the units that are groups).
        sizes: unit name -> its training rows (None: a stream's, undeclared).
        batch_sizes: unit name -> its per-device batch size.
    """

    def __init__(
        self, tasks: dict[str, Task], data: dict[str, TaskData], config: RunConfig, batch_sizes: dict[str, int]
    ):
        self.tasks, self.data = tasks, data
        self.members = training_units(config.tasks, config.model.max_length)
        self.groups = {
            unit: InputGroup(unit, [tasks[n] for n in names])
            for unit, names in self.members.items()
            if unit not in tasks
        }
        self.train = {unit: group_rows(group, data) for unit, group in self.groups.items()}
        task_sizes = train_sizes(tasks, {n: d.train for n, d in data.items()})
        self.sizes = {u: len(self.train[u]) if u in self.groups else task_sizes[u] for u in self.members}
        self.batch_sizes = {unit: batch_sizes[names[0]] for unit, names in self.members.items()}
        for unit in self.groups:
            logger.info("input group %s: tasks %s train on one encoder pass per batch", unit, self.members[unit])
        for names in shareable_tasks(config.tasks, config.model.max_length):
            logger.info(
                "tasks %s read the same rows: give them one tasks.<task>.input_group to train them on one encoder "
                "pass per batch (docs/input_groups.md)",
                names,
            )

    def sampler(self, sampling: SamplingConfig, seed: int) -> TaskSampler:
        """The run's sampler over the units (``sampling.weights`` gives a group the sum of its tasks')."""
        weights = sampling.weights
        if weights is not None:
            weights = {unit: sum(weights.get(n, 0.0) for n in names) for unit, names in self.members.items()}
        return TaskSampler(
            self.sizes, sampling.strategy, sampling.temperature, sampling.max_examples, weights, seed=seed
        )

    def steps_per_epoch(self, num_processes: int, gradient_accumulation_steps: int) -> int | None:
        """Optimizer steps that see every unit's rows once (None: a stream's size is unknown; sampling.py)."""
        return steps_per_epoch(self.sizes, self.batch_sizes, num_processes, gradient_accumulation_steps)

    def tasks_of(self, units: Sequence[str]) -> list[str]:
        """The tasks that `units` train, in order."""
        return [name for unit in units for name in self.members[unit]]

    def build_loaders(self, tokenizer, args: TrainConfig) -> tuple[dict[str, DataLoader], dict[str, DataLoader]]:
        """Every unit's training loader (a stream's reads this process's part of it) and, for each task
        with eval features, its evaluation loader (evaluation is per task, groups or not)."""
        index = {name: i for i, name in enumerate(self.tasks)}
        train = {}
        for unit, names in self.members.items():
            rows = self.train[unit] if unit in self.groups else self.data[unit].train
            collator = self.groups.get(unit) or self.tasks[unit]
            if is_stream(rows):
                train[unit] = build_stream_loader(collator, rows, tokenizer, self.batch_sizes[unit], args)
                continue
            train[unit] = build_train_loader(
                collator,
                rows,
                tokenizer,
                self.batch_sizes[unit],
                seed=args.seed + index[names[0]],
                group_by_length=args.train_sampling_strategy == "group_by_length",
                num_workers=args.dataloader_num_workers,
            )
        evaluation = {
            name: build_eval_loader(
                self.tasks[name],
                d.eval_features,
                tokenizer,
                args.per_device_eval_batch_size,
                args.dataloader_num_workers,
            )
            for name, d in self.data.items()
            if d.eval_features is not None
        }
        return train, evaluation
