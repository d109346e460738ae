"""One run per output_dir: a lock file, ``<output_dir>/.hfmtl.lock``, held while a training writes there.

Two trainings writing one directory would rotate each other's checkpoints, resume each other's state and
overwrite each other's model. The lock is an advisory ``flock`` on the file, which the kernel drops when
its holder dies however it dies (SIGKILL included): on this host, a lock file nobody holds is stale by
construction -- no guessing from pids, which the system reuses. The file says who holds it -- pid, host,
start time -- for the refusal's message and for the warning when a dead owner's lock is taken over. A
lock file left by another host is not taken over: whether a shared file system passes flocks between
hosts is not something to bet a run on, so that stays the user's call (delete the file). The file is
hidden, so a Hub push never uploads it (hfmtl/publish/hub.py leaves out dot files).

Under several processes only the main one takes the lock (`hold_run_lock`); every process learns the
outcome, so a refusal stops them all instead of leaving the others waiting at a barrier.

Example:
    >>> import tempfile
    >>> output_dir = tempfile.mkdtemp()
    >>> with RunLock.acquire(output_dir):
    ...     RunLock.acquire(output_dir)
    Traceback (most recent call last):
    hfmtl.training.run_lock.RunLockedError: ...is in use by another run (pid ... on host ...
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import HfmtlError

try:
    import fcntl
except ImportError:  # Windows: no flock (see `RunLock.acquire`)
    fcntl = None

logger = logging.getLogger("hfmtl")

LOCK_FILE = ".hfmtl.lock"


class RunLockedError(HfmtlError):
    """Another training holds the output directory's lock."""


class RunLock:
    """The held lock of one output directory; `release` (or the end of a ``with`` block) gives it up."""

    def __init__(self, path: Path, fd: int | None, created_dir: bool):
        self.path, self._fd, self._created_dir = path, fd, created_dir

    @classmethod
    def acquire(cls, output_dir: str | os.PathLike) -> RunLock:
        """Take `output_dir`'s lock (creating the directory if needed).

        Raises:
            RunLockedError: a live process holds it; the message names it.
        """
        directory = Path(output_dir)
        created_dir = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / LOCK_FILE
        if fcntl is None:
            logger.warning("no file locks on this platform: nothing stops a second run from writing %s", directory)
            return cls(path, None, created_dir)
        fd = _lock(path, directory)
        earlier = _read_owner(path)
        if earlier and earlier.get("host") != socket.gethostname():
            cls(path, fd, False).release_without_deleting()
            raise RunLockedError(
                f"{directory} is locked by a run on another host ({_describe(earlier)}); if that run is over, "
                f"delete {path}"
            )
        if earlier:
            logger.warning(
                "taking over the lock of %s: %s, which is no longer running (it was killed, or crashed)",
                directory,
                _describe(earlier),
            )
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_this_process()).encode())
        os.fsync(fd)
        return cls(path, fd, created_dir)

    def release(self) -> None:
        """Delete the lock file and give up the lock (the file goes first: see `_lock`). Idempotent.
        An output directory the lock created and nothing else wrote into is removed too."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
        self.release_without_deleting()
        if self._created_dir:
            with contextlib.suppress(OSError):  # not empty: the run wrote into it
                self.path.parent.rmdir()

    def release_without_deleting(self) -> None:
        """Give up the lock and leave the file as it is."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


@contextlib.contextmanager
def hold_run_lock(output_dir: str | os.PathLike, accelerator) -> Iterator[RunLock | None]:
    """`output_dir`'s lock for the block, taken by the main process, released at its end or on an error;
    a refusal is raised on every process. Yields the lock (None on the other processes)."""
    from accelerate.utils import broadcast_object_list

    lock, error = None, None
    if accelerator.is_main_process:
        try:
            lock = RunLock.acquire(output_dir)
        except (HfmtlError, OSError) as err:  # raised below, once the other processes know
            error = err
    refusal = broadcast_object_list([None if error is None else str(error)])[0]
    if error is not None:
        raise error
    if refusal is not None:
        raise RunLockedError(refusal)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


def _lock(path: Path, directory: Path) -> int:
    """An open descriptor of the lock file `path`, holding its flock.

    Raises:
        RunLockedError: a live process holds it.
        HfmtlError: the file system has no locks.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"{directory} is in use by another run ({_describe(_read_owner(path))}); wait for it to end, "
                "stop it, or use another train.output_dir"
            ) from None
        except OSError as err:
            os.close(fd)
            raise HfmtlError(
                f"cannot lock {path} ({err.strerror}): put train.output_dir on a file system with locks"
            ) from err
        # The holder before us may have released (and deleted) the file between our open and our flock:
        # then we would hold a lock on a file no one else sees. Open the path afresh.
        if _same_file(fd, path):
            return fd
        os.close(fd)


def _this_process() -> dict[str, Any]:
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": started}


def _read_owner(path: Path) -> dict[str, Any] | None:
    """What the lock file says of its holder; None for an empty file (a holder that is still writing it)
    or an unreadable one."""
    try:
        owner = json.loads(path.read_text() or "null")
    except (OSError, json.JSONDecodeError):
        return None
    return owner if isinstance(owner, dict) else None


def _describe(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "a process that has not written its name yet"
    return f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
