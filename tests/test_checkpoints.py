"""Trustworthy checkpoints: each is flushed to disk before its rename and carries a manifest (the size
and sha256 of every file); a resume checks it first. A damaged checkpoint -- a flipped bit of the same
size, a truncated file, a missing RNG state -- is named, never loaded: 'latest' falls back to the one
before it (and the run still resumes exactly), an explicit path is a one-line error. Rotation keeps the
newest K and never the checkpoints of a run that went further in place of this run's own."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import TASK_CONFIGS, CrashAt, make_config, reset_accelerate_state, run_recipe, write_config
from safetensors.torch import load_file

from hfmtl import cli
from hfmtl.training.checkpointing import list_checkpoints, resolve_resume_path, save_checkpoint
from hfmtl.training.manifest import MANIFEST_NAME, InvalidCheckpoint, read_manifest

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

TWO_TASKS = {"rte": TASK_CONFIGS["rte"], "ner": TASK_CONFIGS["ner"]}
# checkpoints at steps 3, 6 and 9 (the default save_total_limit=2 keeps 6 and 9); the crashed run dies
# as step 10 begins
RUN = {"max_steps": 10, "save_steps": 3, "eval_steps": 5, "load_best_model_at_end": False}


def _save_checkpoints(output_dir: Path, steps, limit=None, run_id="run-a", extra=None) -> list[Path]:
    """A few real `Accelerator.save_state` checkpoints of a small model and its Adam state."""
    reset_accelerate_state()
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 8)
    model, optimizer = accelerator.prepare(linear, torch.optim.Adam(linear.parameters(), lr=0.1))
    saved = []
    for step in steps:
        model(torch.randn(4, 8)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        saved.append(save_checkpoint(accelerator, output_dir, step, limit, run_id=run_id, extra=extra))
    return saved


def _flip_one_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def hfmtl_log(caplog, monkeypatch):
    """The hfmtl logger's records (a recipe run earlier in the session turns its propagation off)."""
    monkeypatch.setattr(logging.getLogger("hfmtl"), "propagate", True)
    caplog.set_level(logging.INFO, logger="hfmtl")
    return caplog


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hfmtl" and r.levelno == logging.WARNING]


def test_a_checkpoint_lists_every_file_with_its_size_and_sha256(tmp_path):
    extra = {"seed": 0, "tasks": ["rte", "ner"], "per_device_train_batch_size": 8}
    (checkpoint,) = _save_checkpoints(tmp_path, [5], run_id="run-a", extra=extra)

    manifest = read_manifest(checkpoint)
    assert (manifest.step, manifest.run_id, manifest.num_processes, manifest.extra) == (5, "run-a", 1, extra)
    on_disk = sorted(p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file())
    assert sorted(manifest.files) == [n for n in on_disk if n != MANIFEST_NAME]
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= set(manifest.files)
    for name, entry in manifest.files.items():
        data = (checkpoint / name).read_bytes()
        assert (entry.size, entry.sha256) == (len(data), hashlib.sha256(data).hexdigest()), name
    assert json.loads((checkpoint / MANIFEST_NAME).read_text())["run_id"] == "run-a"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names a file descriptor through /proc")
def test_every_file_and_directory_is_flushed_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    (final,) = _save_checkpoints(tmp_path.resolve(), [2])

    tmp = final.with_name(final.name + ".tmp")
    rename = events.index(("replace", str(tmp), str(final)))
    flushed_before = {path for kind, path, *_ in events[:rename] if kind == "fsync"}
    written = {str(tmp / p.relative_to(final)) for p in final.rglob("*")}
    assert written | {str(tmp)} <= flushed_before
    assert ("fsync", str(final.parent)) in events[rename:]  # and the rename itself


@pytest.mark.parametrize("file", ["optimizer.bin", "model.safetensors"])
def test_a_flipped_bit_of_the_same_size_is_named(tmp_path, file):
    checkpoint = _save_checkpoints(tmp_path, [1, 2])[-1]
    size = (checkpoint / file).stat().st_size
    _flip_one_bit(checkpoint / file)
    assert (checkpoint / file).stat().st_size == size

    with pytest.raises(InvalidCheckpoint) as caught:
        resolve_resume_path(str(checkpoint), tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert f"checkpoint {checkpoint}: {file} does not match its sha256 in manifest.json" in message
    assert (caught.value.checkpoint, caught.value.file) == (checkpoint, file)


def test_a_truncated_file_is_named(tmp_path):
    checkpoint = _save_checkpoints(tmp_path, [1])[0]
    path = checkpoint / "model.safetensors"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])

    with pytest.raises(
        InvalidCheckpoint, match=rf"model\.safetensors has {size // 2} bytes, manifest\.json says {size}"
    ):
        resolve_resume_path(str(checkpoint), tmp_path)


def test_a_missing_rng_state_is_an_error_not_an_inexact_resume(tmp_path):
    checkpoint = _save_checkpoints(tmp_path, [1])[0]
    (checkpoint / "random_states_0.pkl").unlink()

    with pytest.raises(InvalidCheckpoint) as caught:
        resolve_resume_path(str(checkpoint), tmp_path)
    assert "random_states_0.pkl is missing (the RNG state of process 0: an exact resume needs it)" in str(caught.value)
    assert caught.value.file == "random_states_0.pkl"


def test_latest_falls_back_past_damaged_checkpoints_with_a_warning(tmp_path, hfmtl_log):
    first, second, third = _save_checkpoints(tmp_path, [1, 2, 3])
    _flip_one_bit(third / "optimizer.bin")
    (second / MANIFEST_NAME).write_text("{ not json")

    assert resolve_resume_path("latest", tmp_path, run_id="run-a") == first
    warnings = _warnings(hfmtl_log)
    assert len(warnings) == 2
    assert f"checkpoint {third}: optimizer.bin does not match its sha256" in warnings[0]
    assert f"checkpoint {second}: manifest.json cannot be read" in warnings[1]

    (first / "optimizer.bin").write_bytes(b"")  # none whole is left: an error naming the newest
    with pytest.raises(InvalidCheckpoint) as caught:
        resolve_resume_path("latest", tmp_path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("train.resume_from_checkpoint='latest': no whole checkpoint")
    assert f"checkpoint {third}: optimizer.bin" in message and "(and 2 older one(s))" in message


def test_latest_takes_only_checkpoints_of_its_run(tmp_path, hfmtl_log):
    ours = _save_checkpoints(tmp_path, [1, 2], run_id="run-a")
    theirs = _save_checkpoints(tmp_path, [3], run_id="run-b")[0]

    assert resolve_resume_path("latest", tmp_path, run_id="run-a") == ours[-1]
    assert f"Not resuming {theirs}: it was written by run 'run-b', not by run 'run-a'" in _warnings(hfmtl_log)
    assert resolve_resume_path("latest", tmp_path, run_id="run-b") == theirs
    assert resolve_resume_path("latest", tmp_path) == theirs  # no run asked for: any whole one
    assert resolve_resume_path("latest", tmp_path, run_id="run-c") is None  # none of its own: a fresh start


def test_a_checkpoint_of_an_older_hfmtl_is_taken_with_a_warning_only_without_a_run_id(tmp_path, hfmtl_log):
    first, second = _save_checkpoints(tmp_path, [1, 2])
    (second / MANIFEST_NAME).unlink()  # as hfmtl wrote checkpoints before manifests

    assert resolve_resume_path("latest", tmp_path) == second
    assert any("has no manifest.json (it was written by an older hfmtl)" in w for w in _warnings(hfmtl_log))
    assert resolve_resume_path("latest", tmp_path, run_id="run-a") == first


def test_rotation_keeps_the_newest_k_and_never_for_a_later_run(tmp_path):
    kept = _save_checkpoints(tmp_path / "plain", [1, 2, 3, 4, 5], limit=2)
    assert (
        [p.name for p in list_checkpoints(tmp_path / "plain")]
        == ["checkpoint-4", "checkpoint-5"]
        == [p.name for p in kept[-2:]]
    )

    # A run went to step 9, then this one resumed from checkpoint-3 and saves step 4: checkpoint-9 is
    # not newer than this run's checkpoints, it is another trajectory's; it must not push out the
    # checkpoint just written, nor the one resumed from.
    out = tmp_path / "resumed"
    _save_checkpoints(out, [1, 2, 3, 9])
    _save_checkpoints(out, [4], limit=2)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3", "checkpoint-4", "checkpoint-9"]
    _save_checkpoints(out, [5], limit=1)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-5", "checkpoint-9"]


def test_a_crash_during_rotation_leaves_no_half_removed_checkpoint(tmp_path, monkeypatch):
    _save_checkpoints(tmp_path, [1, 2])
    real_rmtree = shutil.rmtree

    def rmtree_killed_half_way(path, ignore_errors=False):
        if ignore_errors:  # clearing leftovers
            return real_rmtree(path, ignore_errors=True)
        for name in (MANIFEST_NAME, "model.safetensors"):  # the removal got this far
            (Path(path) / name).unlink()
        raise KeyboardInterrupt("killed while removing an old checkpoint")

    monkeypatch.setattr(shutil, "rmtree", rmtree_killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        _save_checkpoints(tmp_path, [3], limit=2)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    _save_checkpoints(tmp_path, [4], limit=2)  # the next rotation clears what was left
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-4"]


# --- a real run of the recipe: a damaged newest checkpoint, then a resume --------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_encoder_dir) -> Path:
    """`straight/`: RUN uninterrupted; `crashed/`: the same run killed as step 10 began (checkpoints 6, 9)."""
    root = tmp_path_factory.mktemp("runs")
    reset_accelerate_state()
    run_recipe(write_config(root / "straight.yaml", make_config(tiny_encoder_dir, root / "straight", TWO_TASKS, **RUN)))
    reset_accelerate_state()
    crashed = write_config(root / "crashed.yaml", make_config(tiny_encoder_dir, root / "crashed", TWO_TASKS, **RUN))
    with pytest.raises(KeyboardInterrupt):
        run_recipe(crashed, callbacks=[CrashAt(10)])
    reset_accelerate_state()
    assert [p.name for p in list_checkpoints(root / "crashed")] == ["checkpoint-6", "checkpoint-9"]
    return root


def _copy_of_crashed_run(runs: Path, tiny_encoder_dir: str, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "run"
    shutil.copytree(runs / "crashed", out)
    return out, write_config(tmp_path / "run.yaml", make_config(tiny_encoder_dir, out, TWO_TASKS, **RUN))


def test_latest_resumes_exactly_from_the_checkpoint_before_a_damaged_one(runs, tiny_encoder_dir, tmp_path):
    out, cfg = _copy_of_crashed_run(runs, tiny_encoder_dir, tmp_path)
    damaged = out / "checkpoints" / "checkpoint-9"
    optimizer = damaged / "optimizer.bin"
    data = bytearray(optimizer.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = b"\xff" * 4096  # one 4 KiB block of NaNs, the file's size unchanged
    optimizer.write_bytes(bytes(data))

    run_recipe(cfg, "train.resume_from_checkpoint=latest")

    log = (out / "train.log").read_text()
    assert f"checkpoint {damaged}: optimizer.bin does not match its sha256 in manifest.json" in log
    assert f"Resumed from {out / 'checkpoints' / 'checkpoint-6'} at step 6" in log
    a, b = load_file(runs / "straight" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert history == json.loads((runs / "straight" / "metrics.json").read_text())["history"]
    # checkpoint-9 was written again, whole
    assert read_manifest(damaged).step == 9 and resolve_resume_path(str(damaged), out) == damaged


def test_an_explicit_path_to_a_damaged_checkpoint_is_one_line(runs, tiny_encoder_dir, tmp_path, capsys):
    out, cfg = _copy_of_crashed_run(runs, tiny_encoder_dir, tmp_path)
    damaged = out / "checkpoints" / "checkpoint-9"
    _flip_one_bit(damaged / "model.safetensors")

    assert cli.main(["train", str(cfg), f"train.resume_from_checkpoint={damaged}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1
    last = err.strip().splitlines()[-1]  # progress bars of the tokenization may come before it
    assert last == (
        f"error: train.resume_from_checkpoint: checkpoint {damaged}: model.safetensors does not match its sha256 "
        "in manifest.json (the file is corrupt); resume from another checkpoint, or with 'latest' (the newest "
        "whole one)"
    )
    assert not (out / "model.safetensors").exists()  # nothing was trained from it
