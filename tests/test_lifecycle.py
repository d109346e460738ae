"""A run's lifecycle under crashes, re-runs and a second run: the recipe run for real, in-process, on the
tiny encoder and real data slices.

- a finished run is final: running its command again changes nothing;
- a kill anywhere in the finishing sequence resumes to the final model an uninterrupted run saves;
- the resume contract: a checkpoint continues only the training it was written by;
- one run per output_dir (a lock), ``overwrite_output_dir`` starts clean, rotation sees one run;
- killing ``accelerate launch`` stops its workers (slow: a real two-process run).
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TASK_CONFIGS, CrashAt, make_config, reset_accelerate_state, run_recipe, write_config
from launching import accelerate_command, launch_environment
from safetensors.torch import load_file

from hfmtl import cli
from hfmtl.run_record import RunRecord
from hfmtl.training.checkpointing import list_checkpoints

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(autouse=True)
def _log_to_this_test_s_stderr():
    """`setup_logging` keeps the stream handler it made first, bound to the stderr of the test that made
    it (pytest gives each test its own): drop it, so a test that reads its stderr finds its own logs there."""
    logger = logging.getLogger("hfmtl")
    for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
        logger.removeHandler(handler)


# The best evaluation must be far from the last one, or "the best model" and "the last weights" would be
# the same file. The STS-B mse falls steadily on these slices; preferring the HIGHEST mse makes the first
# evaluation (step 4 of 12) the best by a wide margin, whatever small numeric drift there is.
STSB = {"stsb": {**TASK_CONFIGS["stsb"], "metrics": ["mse", "pearson"]}}
BEST_FIRST = {"metric_for_best_model": "stsb/mse", "greater_is_better": True}


def _config(encoder: str, out: Path, tmp_path: Path, name: str = "run.yaml", **train) -> Path:
    settings = {"max_steps": 12, "eval_steps": 4, "save_steps": 4, **BEST_FIRST, **train}
    return write_config(tmp_path / name, make_config(encoder, out, STSB, **settings))


def _snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file under `directory`: its content hash and modification time."""
    return {
        str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _weights_differ(a: Path, b: Path) -> list[str]:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert first.keys() == second.keys()
    return [k for k in first if not torch.equal(first[k], second[k])]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and err.count("error: ") == 1, err
    return last


@pytest.fixture(scope="module")
def reference(tiny_encoder_dir, tmp_path_factory) -> Path:
    """An uninterrupted run: the final model every interrupted one must end with."""
    tmp_path = tmp_path_factory.mktemp("reference")
    reset_accelerate_state()
    out = tmp_path / "out"
    run_recipe(_config(tiny_encoder_dir, out, tmp_path))
    record = RunRecord.read(out)
    assert record.best_step == 4 and record.finished  # the premise of BEST_FIRST
    return out


# --- a finished run is final ---------------------------------------------------------------------------


def test_rerunning_a_finished_run_changes_nothing(tiny_encoder_dir, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = _config(tiny_encoder_dir, out, tmp_path, max_steps=8)
    assert cli.main(["train", str(cfg)]) == 0
    before = _snapshot(out)
    capsys.readouterr()

    reset_accelerate_state()
    assert cli.main(["train", str(cfg), "train.resume_from_checkpoint=latest"]) == 0
    assert "holds a finished run" in capsys.readouterr().out
    assert _snapshot(out) == before  # the same files, byte for byte, none written again

    # the same command with another learning rate did not train that run: refused, and nothing written
    reset_accelerate_state()
    assert cli.main(["train", str(cfg), "train.resume_from_checkpoint=latest", "train.learning_rate=0.01"]) == 2
    assert "finished run trained with other settings: train.learning_rate (0.001 -> 0.01)" in _one_line_error(capsys)
    assert _snapshot(out) == before


def _crash_after_final_save(monkeypatch):
    from hfmtl.training.trainer import MultiTaskTrainer

    save_model = MultiTaskTrainer.save_model

    def save_then_die(self, directory):
        save_model(self, directory)
        if Path(directory) == self.output_dir:
            raise KeyboardInterrupt("killed after the final model was saved")

    monkeypatch.setattr(MultiTaskTrainer, "save_model", save_then_die)


def _crash_after_final_metrics(monkeypatch):
    write = RunRecord.write

    def write_then_die(self, directory):
        path = write(self, directory)
        if self.train is not None:
            raise KeyboardInterrupt("killed after metrics.json was written")
        return path

    monkeypatch.setattr(RunRecord, "write", write_then_die)


def _crash_during_the_card(monkeypatch):
    import hfmtl.publish.callbacks

    def die(*args, **kwargs):
        raise KeyboardInterrupt("killed while the model card was written")

    monkeypatch.setattr(hfmtl.publish.callbacks, "write_model_card", die)


CRASHES = {
    "after the final save": _crash_after_final_save,
    "after metrics.json": _crash_after_final_metrics,
    "during the card": _crash_during_the_card,
}


@pytest.mark.parametrize("moment", sorted(CRASHES))
def test_a_kill_while_finishing_resumes_to_the_same_final_model(moment, reference, tiny_encoder_dir, tmp_path):
    out = tmp_path / "out"
    cfg = _config(tiny_encoder_dir, out, tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        CRASHES[moment](patch)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(cfg)
    assert not RunRecord.read(out).finished  # the completion marker comes last

    reset_accelerate_state()
    run_recipe(cfg, "train.resume_from_checkpoint=latest")
    assert _weights_differ(out, reference) == []  # the best (step 4) weights, not the last (step 12)
    record, expected = RunRecord.read(out), RunRecord.read(reference)
    assert record.finished and record.best_step == expected.best_step == 4
    assert [e["step"] for e in record.history] == [4, 8, 12]  # no evaluation twice
    assert record.history == expected.history
    assert (out / "README.md").is_file() and not (out / "best").exists()


def test_an_evaluation_is_not_recorded_twice_when_a_resume_starts_at_the_last_step(tiny_encoder_dir, tmp_path):
    """The last step is a checkpoint but not an evaluation step: the final evaluation comes after the
    checkpoint, and a resume from that checkpoint must not add it a second time."""
    out = tmp_path / "out"
    cfg = _config(tiny_encoder_dir, out, tmp_path, max_steps=10, eval_steps=4, save_steps=5)
    with pytest.MonkeyPatch.context() as patch:
        _crash_during_the_card(patch)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(cfg)
    reset_accelerate_state()
    run_recipe(cfg, "train.resume_from_checkpoint=latest")
    assert [e["step"] for e in RunRecord.read(out).history] == [4, 8, 10]


# --- the resume contract ---------------------------------------------------------------------------------


@pytest.fixture
def interrupted(tiny_encoder_dir, tmp_path) -> tuple[Path, Path]:
    """A run killed at step 7 of 12, with checkpoint-4 written: (its config, its output_dir)."""
    out = tmp_path / "out"
    cfg = _config(tiny_encoder_dir, out, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(cfg, callbacks=[CrashAt(7)])
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4"]
    reset_accelerate_state()
    return cfg, out


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["train.learning_rate=0.002"], ["train.learning_rate"]),
        (
            ["train.warmup_steps=2", "train.seed=1", "sampling.strategy=uniform"],
            ["sampling.strategy", "train.seed", "train.warmup_steps"],
        ),
        (["train.per_device_train_batch_size=4"], ["train.per_device_train_batch_size"]),
        (["tasks.stsb.max_train_samples=32"], ["tasks.stsb.max_train_samples"]),
    ],
)
def test_a_changed_training_is_refused_on_resume(overrides, keys, interrupted, capsys):
    cfg, out = interrupted
    before = _snapshot(out)
    capsys.readouterr()
    assert cli.main(["train", str(cfg), "train.resume_from_checkpoint=latest", *overrides]) == 2
    error = _one_line_error(capsys)
    assert "checkpoint-4" in error
    for key in keys:
        assert key in error
    assert _snapshot(out) == before  # config.yaml included: nothing is written before the resume is accepted


def test_resuming_with_a_task_removed_is_refused_in_one_line(tiny_encoder_dir, tmp_path, capsys):
    out = tmp_path / "out"
    settings = {"max_steps": 12, "eval_steps": 4, "save_steps": 4, **BEST_FIRST}
    both = write_config(
        tmp_path / "both.yaml", make_config(tiny_encoder_dir, out, {**STSB, "rte": TASK_CONFIGS["rte"]}, **settings)
    )
    with pytest.raises(KeyboardInterrupt):
        run_recipe(both, callbacks=[CrashAt(5)])
    reset_accelerate_state()
    capsys.readouterr()
    assert (
        cli.main(["train", str(_config(tiny_encoder_dir, out, tmp_path)), "train.resume_from_checkpoint=latest"]) == 2
    )
    assert "tasks.rte" in _one_line_error(capsys)


def test_a_safe_change_is_accepted_and_logged(interrupted, reference):
    cfg, out = interrupted
    run_recipe(cfg, "train.resume_from_checkpoint=latest", "train.logging_steps=2", "train.save_total_limit=3")
    log = (out / "train.log").read_text()
    assert "train.logging_steps (5 -> 2)" in log and "train.save_total_limit (2 -> 3)" in log
    assert RunRecord.read(out).finished and _weights_differ(out, reference) == []
    assert "logging_steps: 2" in (out / "config.yaml").read_text()


def test_max_steps_is_extended_only_on_purpose(tiny_encoder_dir, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = _config(tiny_encoder_dir, out, tmp_path, max_steps=8)
    run_recipe(cfg)
    before = _snapshot(out)

    reset_accelerate_state()
    capsys.readouterr()
    assert cli.main(["train", str(cfg), "train.resume_from_checkpoint=latest", "train.max_steps=12"]) == 2
    error = _one_line_error(capsys)
    assert "train.max_steps" in error and "resume_extend_max_steps" in error
    assert _snapshot(out) == before

    reset_accelerate_state()
    extend = ["train.resume_from_checkpoint=latest", "train.resume_extend_max_steps=true"]
    assert cli.main(["train", str(cfg), *extend, "train.max_steps=4"]) == 2  # shorter than what was trained
    assert "shorter" in _one_line_error(capsys)

    reset_accelerate_state()
    trainer = run_recipe(cfg, *extend, "train.max_steps=12")
    record = RunRecord.read(out)
    assert trainer.state.global_step == 12 and record.finished and record.train["steps"] == 12
    assert [e["step"] for e in record.history] == [4, 8, 12]
    assert record.best_step == 4 and not (out / "best").exists()
    # the best model is still step 4's: the evaluation of the saved weights is the recorded one
    assert trainer.evaluate()["eval/stsb/mse"] == pytest.approx(record.evaluation(4)["eval/stsb/mse"], rel=1e-5)


def test_an_interrupted_run_cannot_be_cut_below_its_checkpoint(interrupted, capsys):
    cfg, out = interrupted
    capsys.readouterr()
    args = ["train.resume_from_checkpoint=latest", "train.resume_extend_max_steps=true", "train.max_steps=3"]
    assert cli.main(["train", str(cfg), *args]) == 2
    assert "shorter than" in _one_line_error(capsys)


# --- one run per output_dir ------------------------------------------------------------------------------


def test_overwrite_starts_clean_and_rotation_keeps_only_the_new_run(tiny_encoder_dir, tmp_path):
    out = tmp_path / "out"
    old = _config(tiny_encoder_dir, out, tmp_path, "old.yaml", max_steps=12, save_steps=2)
    run_recipe(old)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-10", "checkpoint-12"]
    (out / "notes.txt").write_text("not a file of the run: kept")

    reset_accelerate_state()
    new = _config(tiny_encoder_dir, out, tmp_path, "new.yaml", max_steps=8, save_steps=2, overwrite_output_dir=True)
    trainer = run_recipe(new)
    assert trainer.state.global_step == 8
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-6", "checkpoint-8"]
    record = RunRecord.read(out)
    assert [e["step"] for e in record.history] == [4, 8] and record.train["steps"] == 8
    assert (out / "notes.txt").read_text() == "not a file of the run: kept"

    # a crash of the new run and `latest` resume it, from its own newest checkpoint
    reset_accelerate_state()
    with pytest.raises(KeyboardInterrupt):
        run_recipe(new, callbacks=[CrashAt(5)])
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    reset_accelerate_state()
    assert run_recipe(new, "train.resume_from_checkpoint=latest").state.global_step == 8


def test_overwrite_into_a_directory_that_is_no_run_deletes_nothing(tiny_encoder_dir, tmp_path):
    """A model downloaded into output_dir has the names a run's model has, but it is no run of hfmtl."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "bert"}')
    (out / "model.safetensors").write_bytes(b"not ours")
    cfg = _config(tiny_encoder_dir, out, tmp_path, overwrite_output_dir=True)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(cfg, callbacks=[CrashAt(1)])
    assert (out / "config.json").read_text() == '{"model_type": "bert"}'
    assert (out / "model.safetensors").read_bytes() == b"not ours"


HOLDER = """
import sys, time
from hfmtl.training.run_lock import RunLock
RunLock.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_run_is_refused_and_a_dead_owner_s_lock_is_taken_over(tiny_encoder_dir, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = _config(tiny_encoder_dir, out, tmp_path, max_steps=4)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli.main(["train", str(cfg), "train.resume_from_checkpoint=latest"]) == 2
        error = _one_line_error(capsys)
        assert f"pid {holder.pid}" in error and socket.gethostname() in error
        assert not (out / "metrics.json").exists()
    finally:
        holder.kill()  # SIGKILL: the owner dies without releasing its lock
        holder.wait()
        holder.stdout.close()

    reset_accelerate_state()
    trainer = run_recipe(cfg, "train.resume_from_checkpoint=latest")
    assert trainer.state.global_step == 4 and RunRecord.read(out).finished
    assert f"pid {holder.pid}" in (out / "train.log").read_text()  # the warning of the take-over
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # released at the end


# --- killing the launcher ------------------------------------------------------------------------------


def _launch_two_processes(cfg: Path, *overrides: str, log: Path) -> subprocess.Popen:
    """recipes/train.py under `accelerate launch`, two gloo processes on the CPU (see tests/test_distributed.py)."""
    cmd = accelerate_command([REPO_ROOT / "recipes" / "train.py", "--cpu", "--config", cfg, *overrides], multi_gpu=True)
    env = launch_environment()
    with open(log, "w") as stream:
        return subprocess.Popen(cmd, stdout=stream, stderr=stream, env=env, cwd=REPO_ROOT, start_new_session=True)


@pytest.mark.slow
def test_a_resume_with_another_number_of_processes_is_refused(interrupted, tmp_path):
    cfg, out = interrupted  # one process wrote checkpoint-4
    before = _snapshot(out)
    launcher = _launch_two_processes(cfg, "train.resume_from_checkpoint=latest", log=tmp_path / "launcher.log")
    assert launcher.wait(timeout=600) != 0
    log = (tmp_path / "launcher.log").read_text()
    assert "error: resuming from" in log and "number of processes (1 -> 2)" in log, log[-3000:]
    assert _snapshot(out) == before


def _running(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_killing_the_launcher_stops_its_workers(tiny_encoder_dir, tmp_path):
    import psutil

    out = tmp_path / "out"
    cfg = write_config(
        tmp_path / "run.yaml",
        make_config(tiny_encoder_dir, out, STSB, max_steps=100_000, eval_steps=None, logging_steps=1000),
    )
    launcher = _launch_two_processes(cfg, log=tmp_path / "launcher.log")
    workers = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline and launcher.poll() is None:  # until both ranks train
            log_file = out / "train.log"
            if log_file.is_file() and "Training 100000 steps" in log_file.read_text():
                children = psutil.Process(launcher.pid).children(recursive=True)
                workers = [p for p in children if any(part.endswith("train.py") for part in p.cmdline())]
                break
            time.sleep(1)
        assert len(workers) == 2, (tmp_path / "launcher.log").read_text()[-3000:]

        os.kill(launcher.pid, signal.SIGKILL)  # the launcher alone, as `kill -9 <pid of accelerate launch>`
        launcher.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(_running(w) for w in workers):
            time.sleep(0.2)
        assert [w.pid for w in workers if _running(w)] == []
    finally:
        for process in workers:
            if _running(process):
                process.kill()
        if launcher.poll() is None:
            launcher.kill()
