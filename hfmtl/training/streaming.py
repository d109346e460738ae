"""Streaming tasks: a train split read as a `datasets.IterableDataset` and tokenized on the fly.

A task with ``streaming: true`` has its train split opened with ``datasets.load_dataset(...,
streaming=True)`` (local files or a Hub dataset alike; hfmtl/training/data.py) and cut to
``max_train_samples`` with `IterableDataset.take`. Nothing of it is tokenized or cached before training:
`IterableDataset.map` tokenizes each chunk of rows as the loader reaches it. Its eval split is loaded and
tokenized in memory, as any other task's.

Before training, the stream's first `CHECK_ROWS` rows are read into memory and go through the same
checks as an in-memory split (`Task.setup`: columns, texts, labels; then the task's preprocessing), so
that a wrong column or a bad row there is the usual one-line error naming its file and line. A row
further down that the task cannot preprocess stops the run when the loader reaches it, with the same
one-line error (`tokenize_stream`). Labels given as strings are resolved from those rows and the eval
split: set the task's ``label_names`` when the stream may hold others (one outside them stops the run).

What a stream changes:

- **Sizes.** A stream is not counted before training. Its size is what ``num_train_examples`` declares
  (capped by ``max_train_samples``), else unknown: sampling strategies that weigh tasks by their size
  (``proportional``, ``temperature``) and a length in epochs (``num_train_epochs``) need it, and a config
  that asks for them without it is refused when it is loaded (hfmtl/config/run.py).
- **Epochs.** A streaming task's *pass* is one read of its stream to the end (of ``max_train_samples``
  rows, if set); at the end a new pass starts from the beginning, in the same order (a stream is not
  reshuffled: shuffle the files beforehand). The run's *epoch* (the ``epoch`` of each evaluation in
  metrics.json, and ``num_train_epochs``) counts steps against every task's size, declared for a stream;
  without a declared size the run has no epochs: evaluations carry no ``epoch`` and ``max_steps`` sets
  the length.
- **Progress bar.** It counts optimizer steps up to ``max_steps`` (or the epochs' steps), as for any run;
  never examples of a stream.
- **Batches.** A plain `DataLoader` over the stream with the task's padding collator, not passed through
  `Accelerator.prepare` (which would either read the whole stream on the main process and send out its
  batches, or have every process read all of it): `TaskBatches` moves them to the device. Length
  grouping (``train.train_sampling_strategy: group_by_length``, the default) and ``random`` order apply
  to the in-memory tasks; a stream batches in stream order (the log says so), since grouping or
  shuffling it would need a buffer of rows that the stream's ``state_dict`` does not hold (datasets
  refills a shuffle buffer with other rows on a resume), and a resume would no longer be exact.
- **Processes.** Each process reads its own part of the stream: `datasets.distributed.split_dataset_by_node`
  gives a process whole files when their number divides by the number of processes, else every process
  reads the stream and keeps every n-th example (the n-th from its rank). Its passes end on its own.
- **Resume.** After each batch the task's position holds ``stream``: the dataset's own `state_dict()`
  (what it has yielded). A checkpoint saves it with the other tasks' positions in the training state
  (hfmtl/training/checkpointing.py), every process's under DDP; a resume hands it back to
  `IterableDataset.load_state_dict`, so the stream continues at the next example with nothing re-read
  by hand. The loader reads in the training process (``train.dataloader_num_workers: 0``; a worker's
  copy of the stream would hold the position the checkpoint needs).

Example:
    >>> sizes = train_sizes({"rte": rte, "web": web}, data)  # doctest: +SKIP
    >>> sizes                                                 # doctest: +SKIP
    {'rte': 2490, 'web': None}
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import gather_object
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from ..config import TrainConfig
from ..errors import BadRowError, DataError, HfmtlError
from ..tasks import Task
from .bad_rows import describe_unreadable, reader_logs_silenced
from .sharding import plan_fsdp_wrapping

logger = logging.getLogger("hfmtl")

#: Rows read from the head of a stream before training, for the task's checks.
CHECK_ROWS = 1000


def is_stream(dataset: Any) -> bool:
    """Whether `dataset` is a stream (a `datasets.IterableDataset`)."""
    return isinstance(dataset, datasets.IterableDataset)


def stream_head(task: Task, stream: datasets.IterableDataset, rows: int | None = None) -> datasets.Dataset:
    """The first `rows` (default `CHECK_ROWS`) rows of `stream`, in memory: what the task's checks and a
    bad row's search read.

    Raises:
        DataError: the stream cannot be read there (a line the reader cannot parse, the Hub unreachable).
    """
    try:
        with reader_logs_silenced():
            head = list(stream.take(rows or CHECK_ROWS))
    except (datasets.exceptions.DatasetGenerationError, ValueError, OSError) as err:
        files = (task.config.data_files or {}).get(task.config.train_split) or []
        files = [files] if isinstance(files, str) else list(files)
        builder = task.config.dataset or (Path(files[0]).suffix.lower().lstrip(".") if files else "")
        place = describe_unreadable(files, "json" if builder in ("json", "jsonl") else builder)
        cause = err.__cause__ or err
        reason = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0]}"
        raise DataError(
            f"task {task.name!r}: {place or 'cannot read the start of its train stream: ' + reason}"
        ) from err
    if not head:
        return datasets.Dataset.from_dict({name: [] for name in stream.column_names or []})
    return datasets.Dataset.from_list(head, features=stream.features)


def tokenize_stream(
    task: Task,
    stream: datasets.IterableDataset,
    kwargs: dict[str, Any],
    columns: list[str],
    locate: Callable[[Task, BadRowError], BadRowError],
) -> datasets.IterableDataset:
    """`stream` tokenized on the fly by `task.preprocess` (with `kwargs`), its raw `columns` dropped.
    `IterableDataset.map` runs as the loader reads: it takes no ``desc`` and writes no cache.

    A row past the checked head that the task cannot preprocess stops the run with a `BadRowError`
    naming the row; on one process `locate` adds its file and line (under DDP the index counts the rows
    of this process's part of the stream, so the error says which process's part instead).
    """
    wrapped = {"preprocess": task.preprocess, "task": task, "locate": locate, "kwargs": kwargs}
    return stream.map(
        _preprocess_naming_the_row, batched=True, with_indices=True, fn_kwargs=wrapped, remove_columns=columns
    )


def _preprocess_naming_the_row(examples: dict[str, list], indices: list[int], *, preprocess, task, locate, kwargs):
    try:
        return preprocess(examples, **kwargs)
    except (TypeError, ValueError, KeyError, IndexError) as err:
        for offset, index in enumerate(indices):  # the batch's first row that fails on its own
            try:
                preprocess({key: values[offset : offset + 1] for key, values in examples.items()}, **kwargs)
            except (TypeError, ValueError, KeyError, IndexError) as row_err:
                if isinstance(row_err, HfmtlError):  # the task's own message
                    problem = str(row_err).removeprefix(f"task {task.name!r}: ")
                else:
                    problem = f"cannot be preprocessed ({type(row_err).__name__}: {row_err})".replace("\n", " ")
                process = PartialState()
                if process.num_processes == 1:
                    raise locate(task, BadRowError(task.name, task.config.train_split, index, None, problem)) from err
                raise DataError(
                    f"task {task.name!r}: row {index} of process {process.process_index}'s part of its train "
                    f"stream {problem}"
                ) from err
        raise


def train_sizes(tasks: Mapping[str, Task], train_data: Mapping[str, Any]) -> dict[str, int | None]:
    """Each task's number of training examples: counted for an in-memory task; for a streaming task its
    declared ``num_train_examples`` (capped by ``max_train_samples``), else None (unknown).

    Args:
        tasks: task_name -> Task.
        train_data: task_name -> its tokenized train split (a `Dataset`, or a stream).
    """
    sizes: dict[str, int | None] = {}
    for name, train in train_data.items():
        if not is_stream(train):
            sizes[name] = len(train)
            continue
        declared, limit = tasks[name].config.num_train_examples, tasks[name].config.max_train_samples
        sizes[name] = None if declared is None else min(declared, limit or declared)
    return sizes


def build_stream_loader(
    task: Task,
    stream: datasets.IterableDataset,
    tokenizer,
    batch_size: int,
    args: TrainConfig,
) -> DataLoader:
    """A streaming task's training loader: this process's part of `stream` (by Accelerate's process state,
    which the run's Accelerator set up), in stream order.

    Not for `Accelerator.prepare` (see the module docstring); `TaskBatches` moves its batches to the device.
    """
    # Logged, not refused: train_sampling_strategy (group_by_length by default) is a setting of the whole
    # run that still applies to the in-memory tasks; refusing it would refuse to mix a stream with them.
    logger.info(
        "task %s is streamed: its batches come in stream order, neither shuffled nor grouped by length "
        "(train.train_sampling_strategy=%s applies to the in-memory tasks)",
        task.name,
        args.train_sampling_strategy,
    )
    process = PartialState()
    if process.num_processes > 1:
        stream = split_dataset_by_node(stream, rank=process.process_index, world_size=process.num_processes)
    return DataLoader(
        stream,
        batch_size=batch_size,
        collate_fn=functools.partial(task.collate, tokenizer=tokenizer),
        num_workers=0,
        # creating an iterator must not draw from the global torch RNG (see build_train_loader in data.py)
        generator=torch.Generator().manual_seed(0),
    )


def prepare_with_streams(
    accelerator: Accelerator,
    model,
    optimizer,
    train_loaders: dict[str, DataLoader],
    eval_loaders: dict[str, DataLoader],
) -> tuple[Any, Any, dict[str, DataLoader], dict[str, DataLoader]]:
    """`accelerator.prepare` of the model (under FSDP2 wrapped as sharding.py plans), the optimizer and
    every loader but the streams' (kept as they are); returns them prepared, each task's train loader
    in `train_loaders`' order."""
    in_memory = [name for name, loader in train_loaders.items() if not is_stream(loader.dataset)]
    plan_fsdp_wrapping(accelerator, model)
    prepared = accelerator.prepare(model, optimizer, *(train_loaders[n] for n in in_memory), *eval_loaders.values())
    ready = dict(zip(in_memory, prepared[2 : 2 + len(in_memory)]))
    train = {name: ready.get(name, loader) for name, loader in train_loaders.items()}
    return prepared[0], prepared[1], train, dict(zip(eval_loaders, prepared[2 + len(in_memory) :]))


def positions_of_every_process(
    positions: dict[str, dict[str, Any]], streams: list[str], accelerator: Accelerator
) -> dict[str, dict[str, Any]]:
    """`positions` as a checkpoint keeps them. Under DDP each process reads its own part of a stream and
    has its own position in it: a streaming task's entry then also holds every process's, by process
    index (``processes``), gathered here. Call on every process."""
    if not streams or accelerator.num_processes == 1:
        return positions
    gathered = gather_object([{name: positions[name] for name in streams}])
    return {
        name: {**position, "processes": [by_process[name] for by_process in gathered]} if name in streams else position
        for name, position in positions.items()
    }


def own_position(position: Mapping[str, Any], process_index: int) -> dict[str, Any]:
    """This process's position from a checkpoint's entry (see `positions_of_every_process`)."""
    by_process = position.get("processes")
    return dict(by_process[process_index]) if by_process else dict(position)
