"""Checks of the raw rows a task reads, before anything is tokenized: the first row that cannot be used
is a `BadRowError` naming its split, its row and its column (the data loader, hfmtl/training/data.py,
adds the file and line it came from).

Each check asks Arrow first (a column's type, its null count): on a good column it costs no pass over
the values in Python. Only a column whose type already says something is off (mixed types, stored as
JSON) or that has nulls is searched for the row to name.

Example:
    >>> import datasets
    >>> from hfmtl.tasks.registry import build_task, task_config_from_dict
    >>> config = task_config_from_dict("rte", {"type": "classification", "dataset": "x", "text_column": "s"})
    >>> task = build_task("rte", config)
    >>> check_texts(task, {"train": datasets.Dataset.from_dict({"s": ["fine", None]})}, {"s": False})
    Traceback (most recent call last):
    ...
    hfmtl.errors.BadRowError: task 'rte': split 'train', row 1: column 's' is null; every row needs a text
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import BadRowError

if TYPE_CHECKING:
    import datasets

    from .base import Task


def column(ds: datasets.Dataset, name: str) -> pa.ChunkedArray:
    """The column `name` of `ds` as Arrow (after any `select`), without converting it to Python."""
    return ds.with_format("arrow")[name]


def first_null(values: pa.ChunkedArray) -> int | None:
    """The index of the first null of `values`, or None (read from Arrow's null count when there is none)."""
    if values.null_count == 0:
        return None
    return pc.index(pc.is_null(values), True).as_py()


def is_json(ds: datasets.Dataset, name: str) -> bool:
    """Whether `datasets` stored the column as JSON: its rows hold values of different types."""
    return type(ds.features[name]).__name__ == "Json"


def python_values(ds: datasets.Dataset, name: str) -> Iterator[tuple[int, Any]]:
    """(row, value) of a column, in Python: for the slow search of a column already known to be off."""
    yield from enumerate(ds[name])


def check_not_null(task: Task, splits: dict[str, datasets.Dataset], name: str, what: str) -> None:
    """Every row of every split has a value in column `name` (`what` says what it holds, for the error)."""
    for split, ds in splits.items():
        row = first_null(column(ds, name))
        if row is not None:
            raise BadRowError(task.name, split, row, name, f"is null; every row needs {what}")


def check_texts(task: Task, splits: dict[str, datasets.Dataset], columns: dict[str, bool]) -> None:
    """Every value of the text `columns` (column -> whether it holds a list of texts) is a string, or a
    list of strings.

    Raises:
        BadRowError: the first null, or non-string value, with its split and row.
    """
    for name, is_list in columns.items():
        what = "a list of texts" if is_list else "a text"
        check_not_null(task, splits, name, what)
        for split, ds in splits.items():
            feature = ds.features[name]
            inner = getattr(feature, "feature", None) if is_list else feature
            if inner is not None and getattr(inner, "dtype", None) in ("string", "large_string"):
                if is_list:  # a null inside a list: the lists' nulls were checked above
                    _check_no_null_item(task, split, ds, name)
                continue
            for row, value in python_values(ds, name):
                problem = _text_problem(value, is_list)
                if problem is not None:
                    raise BadRowError(task.name, split, row, name, problem)


def _check_no_null_item(task: Task, split: str, ds: datasets.Dataset, name: str) -> None:
    values = column(ds, name)
    items = pc.list_flatten(values)
    if items.null_count == 0:
        return
    parents = pc.list_parent_indices(values)
    row = parents[pc.index(pc.is_null(items), True).as_py()].as_py()
    raise BadRowError(task.name, split, row, name, "holds a null in its list; every item must be a string")


def _text_problem(value: Any, is_list: bool) -> str | None:
    if not is_list:
        return None if isinstance(value, str) else f"holds {_short(value)}, not a string"
    if not isinstance(value, list):
        return f"holds {_short(value)}, not a list of strings"
    for i, item in enumerate(value):
        if not isinstance(item, str):
            return f"holds {_short(item)} at position {i} of its list, not a string"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
