"""Labels of the task types: where a label set's names come from, label -> id, and the checks every
label (or regression target) must pass before training (present, of one kind, finite).

`IGNORE_INDEX` marks a position with no label (a special token, a later sub-token of a word): the
value PyTorch's `cross_entropy` and transformers' collators skip by default.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ..errors import BadRowError, ConfigError, DataError
from .rows import check_not_null, column, first_null, python_values

if TYPE_CHECKING:
    from .base import Task

IGNORE_INDEX = -100


def resolve_label_names(
    task: Task,
    splits: dict[str, Any],
    label_column: str,
    config_names: list[str] | None,
    num_labels: int | None,
    multi_label: bool = False,
) -> list[str]:
    """Label names from the config, else the dataset's ClassLabel feature, else the string labels seen.

    Integer labels with no names anywhere need `num_labels` (names become LABEL_0...): guessing the
    label count from the data would silently drop a class that happens to be absent from a slice.
    """
    if config_names:
        if len(set(config_names)) != len(config_names):
            raise ConfigError(f"tasks.{task.name}.label_names has duplicates: {config_names}")
        return [str(n) for n in config_names]
    first = next(iter(splits.values()))
    feature = first.features[label_column]
    inner = getattr(feature, "feature", None) if multi_label else feature
    if inner is not None and hasattr(inner, "names"):
        return list(inner.names)
    values: set = set()
    for ds in splits.values():
        for value in ds[label_column]:
            values.update(value if multi_label else [value])
    if values and all(isinstance(v, str) for v in values):
        return sorted(values)
    if num_labels:
        return [f"LABEL_{i}" for i in range(num_labels)]
    raise ConfigError(
        f"tasks.{task.name}: column {label_column!r} holds integer labels without names; "
        "set label_names: [...] (or num_labels)"
    )


def label_to_id(task: Task, value: Any, label2id: dict[str, int]) -> int:
    """Map one label (a name or an integer id) to its id, with a clear error outside the label set."""
    if isinstance(value, str):
        if value not in label2id:
            raise DataError(f"task {task.name!r}: label {value!r} is not in the label set {list(label2id)}")
        return label2id[value]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(label2id):
        return int(value)
    raise DataError(
        f"task {task.name!r}: label {value!r} is outside the label set (ids 0..{len(label2id) - 1}: {list(label2id)})"
    )


def check_labels_present(task: Task, splits: dict[str, Any], label_column: str) -> None:
    """Every row has a label (a null label is not a class).

    Raises:
        BadRowError: the first row without one.
    """
    check_not_null(task, splits, label_column, "a label")


def check_label_kinds(task: Task, splits: dict[str, Any], label_column: str, is_list: bool = False) -> None:
    """Labels are all class names (strings) or all class ids (integers), in every split alike: the same
    value would otherwise mean one class in one split and another in the next.

    Raises:
        BadRowError: the first row whose kind differs (within a split: from that split's first row; across
            splits: from the first split).
    """
    first: tuple[str, str] | None = None  # (kind, split)
    for split, ds in splits.items():
        kind = _feature_kind(ds.features[label_column], is_list)
        if kind is None:  # stored as JSON: rows of more than one kind; name the first that differs
            _check_rows_of_one_kind(task, split, ds, label_column, is_list)
            continue
        if first is None:
            first = (kind, split)
        elif kind != first[0]:
            raise BadRowError(
                task.name,
                split,
                0,
                label_column,
                f"holds {kind}, but {first[0]} in split {first[1]!r}; give every split the same kind of labels "
                "(all names or all ids)",
            )


def check_numeric_targets(task: Task, splits: dict[str, Any], target_column: str) -> None:
    """Every regression target is a finite number, also as the float32 the model trains on.

    Raises:
        BadRowError: the first null, NaN, infinite, too large or non-numeric target.
    """
    for split, ds in splits.items():
        values = column(ds, target_column)
        row = first_null(values)
        if row is not None:
            raise BadRowError(task.name, split, row, target_column, f"is null; {_TARGET_RULE}")
        if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
            numbers = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
            with np.errstate(over="ignore"):
                bad = np.flatnonzero(~np.isfinite(numbers.astype(np.float32)))
            if len(bad):
                row = int(bad[0])
                raise BadRowError(task.name, split, row, target_column, _target_problem(float(numbers[row])))
            continue
        for row, value in python_values(ds, target_column):  # strings, or values of mixed types
            problem = _target_problem(value)
            if problem is not None:
                raise BadRowError(task.name, split, row, target_column, problem)


_FLOAT32_MAX = float(np.finfo(np.float32).max)
_TARGET_RULE = "a regression target must be a finite number: fix or remove the row"


def _target_problem(value: Any) -> str | None:
    """What is wrong with one target value, or None."""
    if value is None:
        return f"is null; {_TARGET_RULE}"
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None:
        return f"{value!r} is not a number; {_TARGET_RULE}"
    if math.isnan(number):
        return f"is NaN; {_TARGET_RULE}"
    if math.isinf(number):
        return f"is {number}; {_TARGET_RULE}"
    if abs(number) > _FLOAT32_MAX:
        return f"is {value!r}, beyond float32 (the precision of training); {_TARGET_RULE}"
    return None


def _feature_kind(feature: Any, is_list: bool) -> str | None:
    """'strings' or 'integers' (class names or ids), 'other' for anything else, None for mixed rows."""
    if type(feature).__name__ == "Json":
        return None
    if is_list:
        inner = getattr(feature, "feature", None)
        return _feature_kind(inner, False) if inner is not None else "other"
    if hasattr(feature, "names"):  # a ClassLabel: ids
        return "integers"
    dtype = str(getattr(feature, "dtype", ""))
    if dtype in ("string", "large_string"):
        return "strings"
    return "integers" if dtype.startswith(("int", "uint")) else "other"


def _value_kind(value: Any) -> str:
    if isinstance(value, str):
        return "strings"
    return "integers" if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else "other"


def _check_rows_of_one_kind(task: Task, split: str, ds: Any, label_column: str, is_list: bool) -> None:
    first: tuple[str, int] | None = None  # (kind, row)
    for row, value in python_values(ds, label_column):
        for item in (value or []) if is_list else [value]:
            if item is None:
                continue
            kind = _value_kind(item)
            if first is None:
                first = (kind, row)
            elif kind != first[0]:
                raise BadRowError(
                    task.name,
                    split,
                    row,
                    label_column,
                    f"holds {_value(item)} ({kind}), but {first[0]} at row {first[1]}; give every row the same "
                    "kind of labels (all names or all ids)",
                )


def _value(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= 30 else text[:27] + "..."
