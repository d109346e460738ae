"""Test-only: what every engine's launch tests check (tests/test_ddp.py, test_fsdp.py, test_deepspeed.py),
issue 12's contract on 2 gloo processes.

One run config, the same under every engine: 3 tasks, one of them (rte) streamed, with
``load_best_model_at_end``. Three launches are shared by an engine's tests:

- ``whole``: the uninterrupted run;
- ``crashed``: the same run killed as step `CRASH_STEP` begins (``HFMTL_TEST_CRASH_AT_STEP``,
  tests/launching.py). Its only checkpoint, of step 2, was written before every head had trained (ner
  trains first at step 5) and in the middle of the stream's first pass (each process has read 1 of its
  2 batches);
- ``resumed``: the crashed run resumed from ``latest``; it reads on past the end of the stream's pass.

With the seed of `TRAIN` the best evaluation is the first (the highest STS-B mse is preferred), so the
final model must be the one loaded back, not the last one trained.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from conftest import TASK_CONFIGS, make_config, write_config
from launching import output_of
from safetensors.torch import load_file

from hfmtl.run_record import RunRecord

STREAMED = "rte"
TASKS = {
    "stsb": {**TASK_CONFIGS["stsb"], "metrics": ["mse", "pearson"]},
    STREAMED: {**TASK_CONFIGS["rte"], "streaming": True},  # 32 rows: 16 per process, 2 batches of 8
    "ner": TASK_CONFIGS["ner"],
}
MAX_STEPS, EVERY, CRASH_STEP, BEST_STEP = 6, 2, 3, 2
TRAIN = {
    "max_steps": MAX_STEPS,
    "eval_steps": EVERY,
    "save_steps": EVERY,
    "save_total_limit": None,  # every checkpoint is kept: the tests read the best one's and the last one's
    "logging_steps": 1,  # each step logs its task's loss: train.log says which head trained when
    "metric_for_best_model": "stsb/mse",
    "greater_is_better": True,
    "load_best_model_at_end": True,
}
SAMPLING = {"strategy": "uniform"}  # proportional sampling needs a stream's size (hfmtl/training/streaming.py)

Launch = Callable[..., subprocess.CompletedProcess]  # (run config, *overrides, crash_at=None)


def write_run_config(encoder: str, root: Path, **train) -> Path:
    """The contract's run config under `root` (output_dir ``root/out``); `train` overrides `TRAIN`."""
    root.mkdir(parents=True, exist_ok=True)
    data = make_config(encoder, root / "out", TASKS, samples=32, eval_samples=16, **{**TRAIN, **train})
    data["sampling"] = dict(SAMPLING)
    return write_config(root / "run.yaml", data)


def launch_whole_crashed_resumed(launch: Launch, encoder: str, root: Path) -> dict[str, SimpleNamespace]:
    """The three launches, each as ``SimpleNamespace(out, code, output, checkpoints)`` by name, where
    ``checkpoints`` are the checkpoint folders' names right after that launch."""
    launched = {}
    for name, config, overrides, crash_at in [
        ("whole", write_run_config(encoder, root / "whole"), (), None),
        ("crashed", write_run_config(encoder, root / "crashed"), (), CRASH_STEP),
        ("resumed", root / "crashed" / "run.yaml", ("train.resume_from_checkpoint=latest",), None),
    ]:
        done, out = launch(config, *overrides, crash_at=crash_at), config.parent / "out"
        checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir()) if (out / "checkpoints").is_dir() else []
        launched[name] = SimpleNamespace(out=out, code=done.returncode, output=output_of(done), checkpoints=checkpoints)
    return launched


def trained_tasks(out: Path, until: int) -> set[str]:
    """The tasks of steps 1..`until`, from train.log (logging_steps=1: each step logs its task's loss)."""
    steps = re.findall(r"step (\d+): \{'train/(\w+)/loss'", (out / "train.log").read_text())
    return {task for step, task in steps if int(step) <= until}


def engines_named(output: str) -> list[tuple[str, str]]:
    """(process, engine) as every process names itself at start, sorted."""
    named = re.findall(r"process (\d of \d) \(local rank \d, host [^,]+, device cpu[:0-9]*\): (.*)", output)
    return sorted((process, engine.strip()) for process, engine in named)


def stream_positions(checkpoint: Path) -> list[dict]:
    """Every process's position in the streamed task, as the checkpoint's TrainingState keeps them."""
    for path in sorted(checkpoint.glob("custom_checkpoint_*.pkl")):
        state = torch.load(path, weights_only=False)
        if isinstance(state, dict) and "positions" in state:
            return state["positions"][STREAMED]["processes"]
    raise AssertionError(f"no TrainingState with positions in {checkpoint}")


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def saved_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def check_whole_run(run: SimpleNamespace, engine: str, weights_at: Callable[[Path], dict]) -> None:
    """The uninterrupted run: both processes under `engine`, 3 tasks trained and evaluated at every
    evaluation, the best step's weights saved as the final model, which `AutoModel` reloads."""
    from transformers import AutoModel

    import hfmtl

    assert run.code == 0, run.output[-4000:]
    assert engines_named(run.output) == [("0 of 2", engine), ("1 of 2", engine)], run.output[-3000:]
    record = RunRecord.read(run.out)
    assert record.finished and record.train["num_processes"] == 2
    assert [entry["step"] for entry in record.history] == list(range(EVERY, MAX_STEPS + 1, EVERY))
    assert trained_tasks(run.out, MAX_STEPS) == set(TASKS)
    for task in TASKS:  # every task evaluated at every evaluation
        assert all(any(key.startswith(f"eval/{task}/") for key in entry) for entry in record.history), task
    assert record.best_step == BEST_STEP, "the best is the first evaluation: the final model is loaded back"
    assert f"Loaded the best model (step {BEST_STEP}," in run.output
    assert not (run.out / "best").exists()

    saved = saved_weights(run.out)
    best, last = (
        weights_at(run.out / "checkpoints" / f"checkpoint-{BEST_STEP}"),
        weights_at(run.out / "checkpoints" / f"checkpoint-{MAX_STEPS}"),
    )
    assert equal(saved, best)  # the best step's weights, bit for bit
    assert not equal(best, last)
    model = AutoModel.from_pretrained(run.out).eval()  # the saved full model, through transformers
    assert isinstance(model, hfmtl.MultiTaskModel) and sorted(model.config.tasks) == sorted(TASKS)
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in saved.items())
    with torch.no_grad():
        logits = model(**_batch(run.out), task="rte").logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def _batch(out: Path) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    return dict(tokenizer(["A man plays."], ["Someone plays."], return_tensors="pt"))


def check_exact_resume(launched: dict[str, SimpleNamespace], weights_at: Callable[[Path], dict]) -> None:
    """The run killed after a checkpoint written before every head had trained and mid-stream, then
    resumed: bit for bit the uninterrupted run (checkpoints, final model, history, best step)."""
    whole, crashed, resumed = launched["whole"], launched["crashed"], launched["resumed"]
    assert whole.code == 0, whole.output[-3000:]
    assert crashed.code != 0 and "simulated crash" in crashed.output, crashed.output[-3000:]
    assert crashed.checkpoints == [f"checkpoint-{EVERY}"], crashed.checkpoints  # killed as step 3 began
    assert trained_tasks(crashed.out, EVERY) < set(TASKS)  # some head (ner) had not trained yet
    assert trained_tasks(crashed.out, EVERY) == trained_tasks(whole.out, EVERY)
    positions = stream_positions(crashed.out / "checkpoints" / f"checkpoint-{EVERY}")
    # each process in the middle of its part's first pass: the stream's own state is what resumes it
    assert [(p["epoch"], p["batches"]) for p in positions] == [(0, 1), (0, 1)]
    assert all(p["stream"] is not None for p in positions)

    assert resumed.code == 0, resumed.output[-4000:]
    assert re.search(rf"Resumed from \S+checkpoint-{EVERY} at step {EVERY}", resumed.output), resumed.output[-3000:]
    for step in range(EVERY + EVERY, MAX_STEPS + 1, EVERY):  # the training itself continued exactly
        checkpoint = f"checkpoints/checkpoint-{step}"
        assert equal(weights_at(resumed.out / checkpoint), weights_at(whole.out / checkpoint)), step
    assert equal(saved_weights(resumed.out), saved_weights(whole.out))
    before, after = RunRecord.read(whole.out), RunRecord.read(resumed.out)
    assert after.history == before.history and after.best_step == before.best_step == BEST_STEP
