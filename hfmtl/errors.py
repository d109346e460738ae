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
