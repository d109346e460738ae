"""What a checkpoint records about the run that wrote it: the run id, and what the resume contract needs
(the config it was trained with: hfmtl/training/resume.py). A JSON file inside the checkpoint directory,
``run.json``, written into ``checkpoint-<step>.tmp`` before the rename, so a complete checkpoint always
has it.

Checkpoint manifests (``manifest.json``, with an ``extra`` mapping) will take this over: then
`write_checkpoint_run` becomes the manifest's writer and `read_checkpoint_run` its reader, and nothing
else changes (save_checkpoint's ``run_id`` and ``extra`` arguments are already the manifest's).

Example:
    >>> import tempfile, pathlib
    >>> checkpoint = pathlib.Path(tempfile.mkdtemp())
    >>> write_checkpoint_run(checkpoint, "5f0c", {"step": 20})
    >>> checkpoint_run_id(checkpoint), read_checkpoint_run(checkpoint)["extra"]
    ('5f0c', {'step': 20})
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..files import write_json_atomic
from ..run_record import read_json

FILE_NAME = "run.json"


def write_checkpoint_run(directory: str | os.PathLike, run_id: str | None, extra: dict[str, Any] | None) -> None:
    """Write the run's id and `extra` into the (not yet renamed) checkpoint `directory`. Main process."""
    write_json_atomic(Path(directory) / FILE_NAME, {"run_id": run_id, "extra": extra or {}})


def read_checkpoint_run(directory: str | os.PathLike) -> dict[str, Any] | None:
    """``{"run_id": ..., "extra": {...}}`` of a checkpoint; None for one written before checkpoints had it.

    Raises:
        HfmtlError: the file is not valid JSON.
    """
    return read_json(Path(directory) / FILE_NAME)


def checkpoint_run_id(directory: str | os.PathLike) -> str | None:
    """The id of the run that wrote the checkpoint `directory` (None: an older checkpoint, or no id)."""
    record = read_checkpoint_run(directory)
    return None if record is None else record.get("run_id")
