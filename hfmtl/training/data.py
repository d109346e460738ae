"""Per-task data: load (Hub id or local files), tokenize once (cached by `datasets`), build loaders.

Relative paths in `data_files` are read from the current working directory, as `datasets` does; the
configs in this repository are meant to be run from its root.

Each split is loaded on its own: only the columns a task reads must agree between splits (AG News's test
file has a `title` column its train file lacks). A row the task cannot use, or a line the reader cannot
parse, is one `DataError` naming the task, the file, the line and the column (hfmtl/training/bad_rows.py).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..errors import BadRowError, ConfigError, DataError, HfmtlError
from ..model.backbone import check_model_path
from ..model.pad_token import ensure_pad_token
from ..tasks import Task
from .bad_rows import describe_unreadable, first_failing_row, locate_row, reader_logs_silenced
from .streaming import is_stream, stream_head, tokenize_stream

# file suffix -> (datasets builder, extra builder kwargs)
_BUILDERS = {
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".parquet": ("parquet", {}),
}


@dataclass
class TaskData:
    """A task's tokenized train features (a stream for a streaming task: hfmtl/training/streaming.py), and
    its eval features with the raw eval examples behind them (QA maps predictions back to context text)."""

    train: datasets.Dataset | datasets.IterableDataset | None
    eval_features: datasets.Dataset | None
    eval_examples: datasets.Dataset | None


def load_tokenizer(model_config):
    """The run's tokenizer (`model.tokenizer_name_or_path`, else the encoder's); one without a pad token
    pads with its end-of-sequence token (hfmtl/model/pad_token.py).

    Raises:
        ConfigError: it cannot be found locally or on the Hub, or has neither a pad nor an EOS token.
    """
    from transformers import AutoTokenizer

    key = "model.tokenizer_name_or_path" if model_config.tokenizer_name_or_path else "model.name_or_path"
    name = check_model_path(model_config.tokenizer_name_or_path or model_config.name_or_path, key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=model_config.revision)
    except OSError as err:  # not found locally, not on the Hub, or the Hub is unreachable
        raise ConfigError(f"model.name_or_path={name!r}: cannot load its tokenizer: {err}") from err
    ensure_pad_token(tokenizer, name, key)
    return tokenizer


def _builder_for(task_name: str, data_files: dict[str, Any], dataset: str | None) -> tuple[str, dict]:
    paths = [p for files in data_files.values() for p in ([files] if isinstance(files, str) else files)]
    for path in paths:
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise DataError(f"task {task_name!r}: data file {path!r} is empty")
        if not Path(path).is_file():
            raise DataError(
                f"task {task_name!r}: data file {path!r} does not exist (paths are relative to the "
                f"current directory {str(Path.cwd())!r})"
            )
    if dataset:
        return dataset, {}
    suffixes = {Path(p).suffix.lower() for p in paths}
    if len(suffixes) != 1 or next(iter(suffixes)) not in _BUILDERS:
        raise DataError(
            f"task {task_name!r}: cannot infer the file format from {sorted(suffixes)}; "
            f"use one of {sorted(_BUILDERS)} or set `dataset: json|csv|parquet`"
        )
    return _BUILDERS[next(iter(suffixes))]


def load_raw_splits(task: Task, train: bool = True) -> dict[str, datasets.Dataset | datasets.IterableDataset]:
    """The task's raw train (unless `train` is False; a stream with ``streaming``) and eval splits, cut to
    max_*_samples.

    Raises:
        DataError: a file is missing or cannot be read (naming its line), a split is not there, or the Hub
            cannot be reached.
    """
    c = task.config
    wanted = {**({"train": c.train_split} if train else {}), **({"eval": c.eval_split} if c.eval_split else {})}
    if not wanted:
        raise DataError(f"task {task.name!r} has no eval_split to evaluate on")
    builder_kwargs: dict[str, Any] = {}
    if c.data_files:
        for role, split in wanted.items():
            if split not in c.data_files:
                fix = (
                    f"set tasks.{task.name}.train_split to one of them"
                    if role == "train"
                    else f"set tasks.{task.name}.eval_split to one of them, or eval_split: null to train "
                    "without evaluation"
                )
                raise DataError(
                    f"task {task.name!r}: data_files has no {split!r} split (has {sorted(c.data_files)}); {fix}"
                )
        path, builder_kwargs = _builder_for(task.name, c.data_files, c.dataset)
    else:
        path = c.dataset
        builder_kwargs.update(name=c.subset, revision=c.revision)
    splits = {}
    for role, split in wanted.items():
        # one split per call (and per cache entry): each infers its own columns
        files = {"data_files": {split: c.data_files[split]}} if c.data_files else {}
        streaming = role == "train" and c.streaming
        try:
            with reader_logs_silenced():
                ds = datasets.load_dataset(path, split=split, streaming=streaming, **builder_kwargs, **files)
        except datasets.exceptions.DatasetGenerationError as err:  # a file the reader cannot parse
            raise DataError(_unreadable(task, split, path, err)) from err
        except (FileNotFoundError, ConnectionError, ValueError) as err:
            # datasets raises these for an unknown Hub id, no network, or a missing split
            raise DataError(f"task {task.name!r}: cannot load split {split!r} of {path!r}: {err}") from err
        limit = c.max_train_samples if role == "train" else c.max_eval_samples
        if limit is not None and (streaming or limit < len(ds)):
            ds = ds.take(limit) if streaming else ds.select(range(limit))
        splits[role] = ds
    return splits


def prepare_task_data(task: Task, tokenizer, max_length: int, main_process_first, train: bool = True) -> TaskData:
    """Load, check and tokenize one task's data (without its train split if `train` is False).

    Args:
        task: the task; its `setup` is called with the raw splits (labels get resolved there).
        tokenizer: a fast tokenizer.
        max_length: tokens per input (the task's own `max_length` wins).
        main_process_first: `accelerator.main_process_first` — the main process tokenizes and writes
            the cache, the others then read it.
    """
    raw = load_raw_splits(task, train)
    roles = {"train": task.config.train_split, "eval": task.config.eval_split}
    # a stream is checked (and its preprocessing tried) on its first rows, then tokenized as it is read
    checked = {role: stream_head(task, ds) if is_stream(ds) else ds for role, ds in raw.items()}
    setup_task(task, checked)
    max_length = task.config.max_length or max_length
    preprocess = {"train": task.preprocess, "eval": task.preprocess_eval}
    kwargs = {"tokenizer": tokenizer, "max_length": max_length}
    with main_process_first():
        features = {}
        for role, ds in checked.items():
            try:
                features[role] = ds.map(
                    preprocess[role],
                    batched=True,
                    fn_kwargs=kwargs,
                    remove_columns=ds.column_names,
                    desc=f"Tokenizing {task.name} {roles[role]}",
                )
            except (TypeError, ValueError, KeyError, IndexError) as err:  # a row the task's checks let through
                row = first_failing_row(ds, preprocess[role], kwargs)
                if row is None:  # no row's own failure
                    raise
                if isinstance(err, HfmtlError):  # the task's own message, then the place
                    problem = str(err).removeprefix(f"task {task.name!r}: ")
                else:
                    problem = f"cannot be preprocessed ({type(err).__name__}: {err})".replace("\n", " ")
                raise _located(task, BadRowError(task.name, roles[role], row, None, problem)) from err
    train_features = features.get("train")
    if train_features is not None and len(train_features) == 0:
        raise DataError(f"task {task.name!r}: no training features after tokenization")
    if is_stream(raw.get("train")):
        train_features = tokenize_stream(task, raw["train"], kwargs, checked["train"].column_names, _located)
    return TaskData(train=train_features, eval_features=features.get("eval"), eval_examples=raw.get("eval"))


def setup_task(task: Task, raw: dict[str, datasets.Dataset]) -> None:
    """`task.setup` on its raw splits (by role: ``train``, ``eval``), under the user's split names so
    that its errors name them; a bad row it finds is named by its file and line.

    Raises:
        DataError: a column is missing, or a row holds a value the task cannot use.
    """
    roles = {"train": task.config.train_split, "eval": task.config.eval_split}
    try:
        task.setup({roles[role]: ds for role, ds in raw.items()})
    except BadRowError as err:
        raise _located(task, err) from None


def _located(task: Task, err: BadRowError) -> BadRowError:
    """`err` with the file and line of its row, when the split was read from local files."""
    c = task.config
    if not c.data_files or err.split not in c.data_files:
        return err
    path, kwargs = _builder_for(task.name, c.data_files, c.dataset)
    files = c.data_files[err.split]
    files = [files] if isinstance(files, str) else list(files)
    place = locate_row(files, path, err.row, kwargs.get("delimiter", ","))
    return err.located(f"{place} (split {err.split!r}, row {err.row})")


def _unreadable(task: Task, split: str, path: str, err: Exception) -> str:
    """One line on a split the reader could not build: the line at fault when the files name it, else
    the reader's own first line."""
    files = task.config.data_files[split] if task.config.data_files else []
    files = [files] if isinstance(files, str) else list(files)
    place = describe_unreadable(files, path) if files else None
    if place is not None:
        return f"task {task.name!r}: {place}"
    cause = err.__cause__ or err
    reason = (str(cause).strip().splitlines() or [""])[0]
    return f"task {task.name!r}: cannot read split {split!r} from {files or path!r}: {type(cause).__name__}: {reason}"


def feature_lengths(dataset: datasets.Dataset) -> list[int]:
    """Tokens per feature (summed over choices for multiple choice), for length-grouped batching."""
    lengths = []
    for ids in dataset["input_ids"]:
        lengths.append(sum(len(x) for x in ids) if ids and isinstance(ids[0], list) else len(ids))
    return lengths


class EpochSampler(Sampler[int]):
    """A fresh, seeded permutation per epoch; optionally grouped by length.

    Every process draws the same permutation (same seed, same epoch); Accelerate then hands consecutive
    batches to different processes. `use_epoch` is called by the trainer (not Accelerate's `set_epoch`)
    because a task's epochs advance independently of every other task's.

    With `lengths` and `batch_size`, indices are shuffled, cut into mega-batches of 50 batches, sorted
    by length inside each (so a batch holds similar lengths and little padding), and the batches are
    shuffled again so that training does not see lengths in order.
    """

    def __init__(
        self,
        num_examples: int,
        seed: int,
        lengths: list[int] | None = None,
        batch_size: int | None = None,
        megabatch_batches: int = 50,
    ):
        self.num_examples = num_examples
        self.seed = seed
        self.lengths = np.asarray(lengths) if lengths is not None else None
        self.batch_size = batch_size
        self.megabatch_batches = megabatch_batches
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_examples)
        if self.lengths is not None and self.batch_size:
            size = self.batch_size * self.megabatch_batches
            sorted_chunks = [
                chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                for chunk in (order[i : i + size] for i in range(0, len(order), size))
            ]
            batches = [c[i : i + self.batch_size] for c in sorted_chunks for i in range(0, len(c), self.batch_size)]
            # only the last batch of all may be short; keep it last so the others stay full
            full, last = (batches[:-1], batches[-1:]) if len(batches[-1]) < self.batch_size else (batches, [])
            full = [full[i] for i in rng.permutation(len(full))]
            order = np.concatenate(full + last) if (full or last) else order
        return iter(order.tolist())


def build_train_loader(
    task: Task,
    dataset: datasets.Dataset,
    tokenizer,
    batch_size: int,
    seed: int,
    group_by_length: bool,
    num_workers: int = 0,
) -> DataLoader:
    """A task's training loader over its `EpochSampler` (to be passed through `accelerator.prepare`); `task`
    may be anything with the task's `collate` (an input group's: hfmtl/training/input_groups.py)."""
    lengths = feature_lengths(dataset) if group_by_length else None
    sampler = EpochSampler(len(dataset), seed, lengths, batch_size if group_by_length else None)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=functools.partial(task.collate, tokenizer=tokenizer),
        num_workers=num_workers,
        # a loader-owned generator: creating an iterator must not draw from the global torch RNG, or a
        # resumed run (which creates its iterators at other steps) would get other dropout masks
        generator=torch.Generator().manual_seed(seed),
    )


def build_eval_loader(
    task: Task, dataset: datasets.Dataset, tokenizer, batch_size: int, num_workers: int = 0
) -> DataLoader:
    """A task's evaluation loader, in dataset order (predictions are matched to examples by position)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=functools.partial(task.collate, tokenizer=tokenizer),
        num_workers=num_workers,
    )
