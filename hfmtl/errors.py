"""User-facing errors.

Every mistake a user can make in a config, a data file or a command line raises a subclass of
`HfmtlError`. The CLI and the recipes print such an error as one line and exit with status 2, instead
of a traceback: the message itself must name the problem and how to fix it.
"""

from __future__ import annotations


class HfmtlError(Exception):
    """Base class of the errors a user can fix (bad config, missing file, unknown task type...)."""


class ConfigError(HfmtlError, ValueError):
    """A config key is unknown, has a value of the wrong type, or a value outside what is allowed."""


class DataError(HfmtlError, ValueError):
    """A dataset is missing, empty, or lacks a column or a label the task needs."""
