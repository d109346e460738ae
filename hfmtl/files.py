"""Writing files so that a reader, or a crash, never sees half of one.

Every file hfmtl writes into a run or model directory goes through here: the content is written to a
temporary sibling, flushed to disk (`os.fsync`), then renamed over the target (`os.replace` is atomic on
POSIX and Windows), and the directory that holds it is flushed too, so that the rename itself survives a
power loss. A crash leaves the old file or the new one, plus at most a ``*.tmp`` sibling that nothing
reads. A directory (a checkpoint, a saved model) is written under a temporary name, flushed file by file
(`fsync_tree`), then renamed into place (`replace_directory`).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.json"
    >>> write_json_atomic(path, {"step": 1, "loss": float("nan")})
    >>> path.read_text()
    '{\\n  "step": 1,\\n  "loss": null\\n}'
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of `path` for a writer that wants a file name (``to_parquet``, a card's
    ``save``); once the block ends without an error, it is flushed to disk and renamed to `path`.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a flushed temporary sibling and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON atomically. NaN and infinities, which JSON has no words for, are
    written as ``null`` (Python's own ``NaN`` token is not JSON, and other readers reject it)."""
    write_text_atomic(path, json.dumps(_finite(data), indent=2, allow_nan=False))


def replace_directory(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the finished directory `tmp` in the place of `final` (which may exist).

    Everything in `tmp` is flushed to disk first (`fsync_tree`): a rename is ordered before the data it
    names only by that, so without it a power loss can leave `final` holding empty or partial files. An
    existing `final` is renamed aside and removed only after `tmp` took its place, so there is no moment
    when neither is complete under a readable name.
    """
    tmp, final = Path(tmp), Path(final)
    fsync_tree(tmp)
    if not final.exists():
        os.replace(tmp, final)
    else:
        old = final.with_name(final.name + ".old" + TMP_SUFFIX)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    fsync_directory(final.parent)


def fsync_tree(directory: str | os.PathLike) -> None:
    """Flush every file under `directory`, then every directory in it (deepest first, `directory` last),
    to disk.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (root / "weights.bin").write_bytes(b"...")
        >>> fsync_tree(root)
    """
    for folder, _, names in os.walk(directory, topdown=False):
        for name in names:
            _fsync_file(Path(folder) / name)
        fsync_directory(folder)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Flush `directory`'s entries (the names created, renamed or removed in it) to disk. A no-op on
    Windows, which cannot open a directory to flush it."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    # POSIX flushes a file through any descriptor, a read-only one too (so a file copied read-only into
    # a model directory is no obstacle); Windows only through one opened for writing.
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finite(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
