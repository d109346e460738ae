"""User-facing errors.

Every mistake a user can make in a config, a data file or a command line raises a subclass of
`HfmtlError`. The CLI and the recipes print such an error as one line and exit with status 2, instead
of a traceback: the message itself must name the problem and how to fix it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class HfmtlError(Exception):
    """Base class of the errors a user can fix (bad config, missing file, unknown task type...)."""


class ConfigError(HfmtlError, ValueError):
    """A config key is unknown, has a value of the wrong type, or a value outside what is allowed."""


class DataError(HfmtlError, ValueError):
    """A dataset is missing, empty, or lacks a column or a label the task needs."""


class BadRowError(DataError):
    """One row of a split holds a value its task cannot use (a null text, a NaN target...).

    The task that finds it knows the split and the row; the data loader (hfmtl/training/data.py) knows
    the files behind the split and names the place with `located` (a file and a line).

    Example:
        >>> err = BadRowError("stsb", "train", 4, "label", "is NaN")
        >>> str(err)
        "task 'stsb': split 'train', row 4: column 'label' is NaN"
        >>> str(err.located("'train.jsonl' line 5 (split 'train', row 4)"))
        "task 'stsb': 'train.jsonl' line 5 (split 'train', row 4): column 'label' is NaN"
    """

    def __init__(
        self, task_name: str, split: str, row: int, column: str | None, problem: str, where: str | None = None
    ):
        self.task_name, self.split, self.row, self.column, self.problem = task_name, split, row, column, problem
        place = where or f"split {split!r}, row {row}"
        what = f"column {column!r} {problem}" if column is not None else problem
        super().__init__(f"task {task_name!r}: {place}: {what}")

    def located(self, where: str) -> BadRowError:
        """The same error, with `where` (the file and line of the row) in place of the split and row."""
        return BadRowError(self.task_name, self.split, self.row, self.column, self.problem, where)


class TrainingError(HfmtlError):
    """The training cannot go on (a loss that is not finite): stopped before anything is saved from it."""


def exit_status_of(main: Callable[[], int | None]) -> int:
    """Run a command's `main` and return its exit status: what `main` returns (None: 0), or 2 after
    printing a user error (an `HfmtlError`) as one line on stderr, without a traceback. The `hfmtl` CLI
    and every recipe end this way.

    Example:
        >>> exit_status_of(lambda: 0)
        0
    """
    try:
        return int(main() or 0)
    except HfmtlError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
