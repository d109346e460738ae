"""A checkpoint's manifest: what a complete, unaltered checkpoint holds, checked before a resume trusts it.

`write_manifest` is the last write into a checkpoint before its rename (`save_checkpoint`,
checkpointing.py): ``manifest.json`` lists every file with its size and sha256, the step, the run id, the
number of processes that saved it (so which ``random_states_<rank>.pkl`` files must be there) and the
caller's JSON metadata. `verify_checkpoint` reads every file back against it. Without it, a checkpoint
damaged on disk fails in three bad ways: a same-size corruption of ``optimizer.bin`` loads without an
error and the run goes on from a wrong state (NaN weights, where a block of it was overwritten); a
truncated file fails deep inside torch with a traceback that names neither the checkpoint nor the file;
a missing RNG state makes Accelerate log one INFO line and resume with other random draws than the run
it continues.

Example:
    >>> import tempfile, pathlib
    >>> checkpoint = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (checkpoint / "random_states_0.pkl").write_bytes(b"rng")
    >>> written = write_manifest(checkpoint, step=4, run_id="run-1", num_processes=1, extra={"seed": 0})
    >>> verify_checkpoint(checkpoint) == written
    True
    >>> _ = (checkpoint / "random_states_0.pkl").write_bytes(b"RNG")  # same size, other bytes
    >>> verify_checkpoint(checkpoint)
    Traceback (most recent call last):
    ...
    hfmtl.training.manifest.InvalidCheckpoint: checkpoint ...: random_states_0.pkl does not match its sha256 in manifest.json (the file is corrupt)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import write_json_atomic

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_CHUNK_BYTES = 1 << 20  # hashing reads this much at a time: a multi-GB optimizer.bin never sits in memory
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RNG_STATE = re.compile(r"^random_states_(\d+)\.pkl$")


def rng_state_file(rank: int) -> str:
    """The file in which `Accelerator.save_state` keeps process `rank`'s RNG states."""
    return f"random_states_{rank}.pkl"


class InvalidCheckpoint(ConfigError):
    """A checkpoint is incomplete or altered: a file is missing, or its size or sha256 is not the one its
    manifest recorded, or the manifest itself cannot be read.

    Attributes:
        checkpoint: the checkpoint directory.
        file: the file at fault, relative to `checkpoint`.
    """

    def __init__(self, message: str, checkpoint: Path, file: str):
        super().__init__(message)
        self.checkpoint, self.file = Path(checkpoint), file


def _invalid(checkpoint: Path, file: str, problem: str) -> InvalidCheckpoint:
    return InvalidCheckpoint(f"checkpoint {checkpoint}: {file} {problem}", checkpoint, file)


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint as it was written."""

    size: int
    sha256: str


@dataclass
class CheckpointManifest:
    """The content of ``manifest.json``.

    Attributes:
        step: the optimizer step the checkpoint was saved at.
        run_id: the run that saved it (None: the caller gave none).
        num_processes: how many processes saved it; each left its RNG state in ``random_states_<rank>.pkl``.
        files: path relative to the checkpoint (``/``-separated) -> its size and sha256.
        extra: JSON metadata of the caller.
        format: the manifest's format version.
    """

    step: int
    run_id: str | None
    num_processes: int
    files: dict[str, FileEntry]
    extra: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "step": self.step,
            "run_id": self.run_id,
            "num_processes": self.num_processes,
            "extra": self.extra,
            "files": {name: {"size": e.size, "sha256": e.sha256} for name, e in self.files.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointManifest:
        """Raises ValueError on anything that is not a manifest this version of hfmtl can read."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        version = data.get("format")
        if version != FORMAT_VERSION:
            raise ValueError(f"format {version!r}, this hfmtl reads format {FORMAT_VERSION}")
        step, run_id, num_processes = data.get("step"), data.get("run_id"), data.get("num_processes")
        files, extra = data.get("files"), data.get("extra", {})
        if not (isinstance(step, int) and isinstance(num_processes, int) and num_processes >= 1):
            raise ValueError(f"step={step!r}, num_processes={num_processes!r}")
        if not (run_id is None or isinstance(run_id, str)) or not isinstance(extra, dict):
            raise ValueError(f"run_id={run_id!r}, extra of type {type(extra).__name__}")
        if not isinstance(files, dict):
            raise ValueError("no 'files' object")
        entries = {}
        for name, entry in files.items():
            if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"the file name {name!r} is not inside the checkpoint")
            size, digest = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (None, None)
            if not (isinstance(size, int) and size >= 0 and isinstance(digest, str) and _SHA256.match(digest)):
                raise ValueError(f"the entry of {name!r} is not a size and a sha256")
            entries[name] = FileEntry(size, digest)
        return cls(step, run_id, num_processes, entries, extra, version)


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of the file at `path`, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(
    checkpoint_dir: str | Path,
    *,
    step: int,
    run_id: str | None,
    num_processes: int,
    extra: dict[str, Any] | None = None,
) -> CheckpointManifest:
    """Record every file now under `checkpoint_dir` (its size and sha256) in its ``manifest.json``.

    Call it once every file of the checkpoint is written, and before the checkpoint's rename.

    Args:
        checkpoint_dir: the checkpoint directory (still under its temporary name).
        step: the optimizer step it was saved at.
        run_id: the run that saves it; a resume with ``latest`` of that run takes only its checkpoints.
        num_processes: the processes that saved it (each wrote ``random_states_<rank>.pkl``).
        extra: JSON-able metadata to keep with it (NaN and infinities are written as null).

    Returns:
        What was written.
    """
    directory = Path(checkpoint_dir)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name != MANIFEST_NAME:
            files[name] = FileEntry(path.stat().st_size, file_sha256(path))
    manifest = CheckpointManifest(step, run_id, num_processes, files, dict(extra or {}))
    write_json_atomic(directory / MANIFEST_NAME, manifest.to_dict())
    return manifest


def read_manifest(checkpoint_dir: str | Path) -> CheckpointManifest | None:
    """The manifest of `checkpoint_dir`; None when it has none (a checkpoint of an older hfmtl).

    Raises:
        InvalidCheckpoint: ``manifest.json`` exists but cannot be read as a manifest.
    """
    directory = Path(checkpoint_dir)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return CheckpointManifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:  # JSON and UTF-8 decoding errors are ValueErrors
        raise _invalid(directory, MANIFEST_NAME, f"cannot be read as a checkpoint manifest ({err})") from err


def verify_files(checkpoint_dir: str | Path, manifest: CheckpointManifest) -> None:
    """Check that every file `manifest` lists is in `checkpoint_dir` with its size and sha256, and that it
    lists the RNG state of every process that saved it. Sizes are checked first: a truncated or missing
    file is found before any file is hashed.

    Raises:
        InvalidCheckpoint: naming the checkpoint and the first file at fault.
    """
    directory = Path(checkpoint_dir)
    for rank in range(manifest.num_processes):
        if rng_state_file(rank) not in manifest.files:
            raise _invalid(directory, rng_state_file(rank), f"is not in {MANIFEST_NAME}{_why_needed(rank)}")
    for name, entry in manifest.files.items():
        path = directory / name
        if not path.is_file():
            rng = _RNG_STATE.match(name)
            raise _invalid(directory, name, "is missing" + (_why_needed(int(rng.group(1))) if rng else ""))
        size = path.stat().st_size
        if size != entry.size:
            problem = f"has {size} bytes, {MANIFEST_NAME} says {entry.size} (truncated or overwritten)"
            raise _invalid(directory, name, problem)
    for name, entry in manifest.files.items():
        if file_sha256(directory / name) != entry.sha256:
            raise _invalid(directory, name, f"does not match its sha256 in {MANIFEST_NAME} (the file is corrupt)")


def _why_needed(rank: int) -> str:
    return f" (the RNG state of process {rank}: an exact resume needs it)"


def verify_checkpoint(checkpoint_dir: str | Path) -> CheckpointManifest | None:
    """Check `checkpoint_dir` against its manifest (`verify_files`); returns the manifest, or None for a
    checkpoint of an older hfmtl, which has none and cannot be checked beyond its RNG state.

    Raises:
        InvalidCheckpoint: naming the checkpoint and the file at fault.
    """
    directory = Path(checkpoint_dir)
    manifest = read_manifest(directory)
    if manifest is None:
        if not (directory / rng_state_file(0)).is_file():
            raise _invalid(directory, rng_state_file(0), "is missing" + _why_needed(0))
        return None
    verify_files(directory, manifest)
    return manifest
