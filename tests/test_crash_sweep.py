"""The crash-safety sweep: a training SIGKILLed at named moments of its code and at seeded random moments,
then run again with the same command until it exits 0, must end with the final model of an uninterrupted
run, bit for bit, and a clean metrics.json.

Every run is a real process (tests/kill_driver.py runs ``hfmtl train`` in it), on the tiny encoder and two
real data slices, with ``resume_from_checkpoint=latest`` in the one command a user would repeat, a
checkpoint every 2 steps with rotation, and ``load_best_model_at_end`` with the best evaluation far from
the last one (so that "the best model" and "the last weights" are different files).

In CI: every named moment once (tests/kill_driver.py `MOMENTS`: a checkpoint without its manifest, a
rotation half done, an evaluation not yet recorded, the best model staged, every step of the finishing
sequence; a moment while training and one while finishing share a case, killed one after the other) and
``RANDOM_CASES`` random cases of one to three kills in a row. The longer sweep, with more
random cases and two processes (gloo DDP, the whole process group killed), is documented in
docs/reliability.md:

    HFMTL_CRASH_SWEEP_CASES=40 HFMTL_CRASH_SWEEP_PROCESSES=2 pytest tests/test_crash_sweep.py
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TASK_CONFIGS, make_config, write_config
from kill_driver import MOMENTS
from launching import accelerate_command, launch_environment
from safetensors.torch import load_file

DRIVER = Path(__file__).with_name("kill_driver.py")
RANDOM_CASES = int(os.environ.get("HFMTL_CRASH_SWEEP_CASES", "3"))
PROCESSES = int(os.environ.get("HFMTL_CRASH_SWEEP_PROCESSES", "1"))
SEED = int(os.environ.get("HFMTL_CRASH_SWEEP_SEED", "0"))
RUN_TIMEOUT = 300

# As in tests/test_lifecycle.py: preferring the HIGHEST STS-B mse makes the first evaluation the best.
TASKS = {
    "stsb": {**TASK_CONFIGS["stsb"], "metrics": ["mse", "pearson"]},
    "rte": TASK_CONFIGS["rte"],
}
TRAIN = {
    "max_steps": 12,
    "eval_steps": 4,
    "save_steps": 2,
    "save_total_limit": 2,
    "logging_steps": 2,
    "metric_for_best_model": "stsb/mse",
    "greater_is_better": True,
    "load_best_model_at_end": True,
    "resume_from_checkpoint": "latest",
}


def _command(config: Path, moment: str) -> list[str]:
    if PROCESSES == 1:
        return [sys.executable, str(DRIVER), moment, str(config)]
    return accelerate_command([DRIVER, moment, config], multi_gpu=True, processes=PROCESSES)


def _start(config: Path, moment: str, log: Path) -> subprocess.Popen:
    env = launch_environment(env={"PYTHONPATH": str(DRIVER.parent)})
    with open(log, "a") as stream:
        stream.write(f"\n=== {moment} ===\n")
        stream.flush()
        # a session of its own: a kill takes the whole process group (launcher and workers), as a node dies
        return subprocess.Popen(
            _command(config, moment), stdout=stream, stderr=stream, env=env, cwd=REPO_ROOT, start_new_session=True
        )


def _run(config: Path, moment: str, log: Path) -> int:
    process = _start(config, moment, log)
    try:
        return process.wait(timeout=RUN_TIMEOUT)
    finally:
        _kill(process)


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _config(encoder: str, root: Path) -> Path:
    config = make_config(encoder, root / "out", TASKS, samples=48, eval_samples=24, **TRAIN)
    return write_config(root / "run.yaml", config)


def _strict_json(path: Path):
    def refuse(constant: str):
        raise AssertionError(f"{path} holds {constant}: not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _finish(config: Path, log: Path, attempts: int = 3) -> None:
    """Run the command again until it exits 0, as a user would after a crash."""
    for _ in range(attempts):
        code = _run(config, "none", log)
        if code == 0:
            return
        assert code != -signal.SIGKILL, log.read_text()[-3000:]
    pytest.fail(f"the run did not finish after {attempts} re-runs:\n{log.read_text()[-3000:]}")


def _assert_same_end(out: Path, reference: Path, log: Path) -> None:
    """The final model, the record and the directory of an uninterrupted run, and nothing left over."""
    context = log.read_text()[-3000:]
    ours, theirs = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert ours.keys() == theirs.keys()
    differ = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert differ == [], f"{len(differ)} tensors differ from the uninterrupted run's:\n{context}"
    record, expected = _strict_json(out / "metrics.json"), _strict_json(reference / "metrics.json")
    steps = [entry["step"] for entry in record["history"]]
    assert steps == sorted(set(steps)), f"an evaluation recorded twice or out of order: {steps}"
    assert record["history"] == expected["history"], context
    assert record["best"] == expected["best"] and record["best"]["step"] == 4
    leftovers = sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.name.endswith(".tmp") or p.name in ("best", ".hfmtl.lock", ".hfmtl-finishing")
    )
    assert leftovers == [], f"left behind: {leftovers}"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-10", "checkpoint-12"]
    card, expected_card = (_card_without_runtime(d / "README.md") for d in (out, reference))
    assert card == expected_card.replace(str(reference), str(out)), "the card differs from the uninterrupted run's"


def _card_without_runtime(path: Path) -> str:
    """The model card without its wall-clock time (of the last process's training: it differs run to run)."""
    return re.sub(r"; training took \d+ s\.", ".", path.read_text())


TRAINING_STARTS = "INFO hfmtl: Training "  # the log line before the first optimizer step


@pytest.fixture(scope="module")
def reference(tiny_encoder_dir, tmp_path_factory) -> tuple[Path, float, float]:
    """An uninterrupted run; how long its process took to start training, and then to end (the spans
    random kills are drawn from)."""
    root = tmp_path_factory.mktemp("reference")
    config, log = _config(tiny_encoder_dir, root), root / "log.txt"
    start = time.monotonic()
    process = _start(config, "none", log)
    try:
        startup = _wait_for_training(process, log, seen=0)
        assert process.wait(timeout=RUN_TIMEOUT) == 0, log.read_text()[-3000:]
    finally:
        _kill(process)
    training = time.monotonic() - start - startup
    assert _strict_json(root / "out" / "metrics.json")["best"]["step"] == 4  # the premise of the setup
    return root / "out", startup, training


def _wait_for_training(process: subprocess.Popen, log: Path, seen: int) -> float:
    """Seconds until the log shows the `seen`+1-th start of a training (or the process ends)."""
    start = time.monotonic()
    while process.poll() is None and log.read_text().count(TRAINING_STARTS) <= seen:
        time.sleep(0.02)
    return time.monotonic() - start


# Every named moment once, two to a case where they can follow each other: a kill while training, then
# the resumed run killed while finishing (each run that reaches the end runs the finishing sequence).
# A case saves a run that way (each run is a fresh process, 8-10 s of imports here) and checks a resume
# that is itself killed; the finish and the end state are checked after every case, as for one kill.
WHILE_TRAINING = [
    "checkpoint-without-manifest",
    "checkpoint-half-removed",
    "evaluation-not-recorded",
    "best-model-staged",
]
WHILE_FINISHING = ["best-loaded-at-end", "final-model-saved", "record-finishing", "model-card", "completion-marker"]
NAMED_CASES = [[*pair] for pair in zip(WHILE_TRAINING, WHILE_FINISHING)] + [
    [m] for m in WHILE_FINISHING[len(WHILE_TRAINING) :]
]
assert sorted(m for case in NAMED_CASES for m in case) == sorted(MOMENTS), "a moment of kill_driver.py is left out"


@pytest.mark.slow
@pytest.mark.parametrize("moments", NAMED_CASES, ids="+".join)
def test_kills_at_named_moments_resume_to_the_uninterrupted_model(moments, reference, tiny_encoder_dir, tmp_path):
    config, log = _config(tiny_encoder_dir, tmp_path), tmp_path / "log.txt"
    for moment in moments:
        code = _run(config, moment, log)
        # one process: killed by its own SIGKILL; several: the launcher ends the run when one worker dies
        killed = code == -signal.SIGKILL if PROCESSES == 1 else code != 0
        assert killed, f"no kill at {moment!r} (after {moments[: moments.index(moment)]}):\n{log.read_text()}"
    _finish(config, log)
    _assert_same_end(tmp_path / "out", reference[0], log)


def _random_cases() -> list[list[tuple[str, float]]]:
    """Per case, one to three kills in a row (seeded): each ``("startup", f)``, at fraction f of the
    reference's time to start training (imports, tokenization, model loading), or ``("training", f)``, at
    fraction f of its time from then to its end (steps, checkpoints, evaluations, the finishing sequence;
    beyond 1, after a resumed run, which has less to do, may have ended: then the kill finds nothing)."""
    rng = random.Random(SEED)
    cases = []
    for _ in range(RANDOM_CASES):
        kills = rng.choice((1, 2, 3))
        cases.append(
            [
                ("startup", rng.random()) if rng.random() < 0.2 else ("training", rng.uniform(0, 1.1))
                for _ in range(kills)
            ]
        )
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("kills", _random_cases(), ids=lambda kills: "+".join(f"{p}{f:.2f}" for p, f in kills))
def test_kills_at_random_moments_resume_to_the_uninterrupted_model(kills, reference, tiny_encoder_dir, tmp_path):
    out, startup, training = reference
    config, log = _config(tiny_encoder_dir, tmp_path), tmp_path / "log.txt"
    for phase, fraction in kills:
        seen = log.read_text().count(TRAINING_STARTS) if log.exists() else 0
        process = _start(config, "none", log)
        try:
            if phase == "training":
                _wait_for_training(process, log, seen)
            process.wait(timeout=fraction * (startup if phase == "startup" else training))
        except subprocess.TimeoutExpired:
            pass
        _kill(process)
    _finish(config, log)
    _assert_same_end(tmp_path / "out", out, log)
