"""Label sets of classification-like task types: where the names come from, and label -> id.

`IGNORE_INDEX` marks a position with no label (a special token, a later sub-token of a word): the
value PyTorch's `cross_entropy` and transformers' collators skip by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, DataError

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
