"""DeepSpeed ZeRO-2 and ZeRO-3: real 2-process launches of the shipped Accelerate configs
(configs/accelerate/deepspeed_zero*.yaml) on CPU processes (gloo), through tests/deepspeed_shim.py (the one
choice Accelerate makes differently without a GPU; docs/scaling.md).

Per stage, three launches are shared by the tests: an uninterrupted run of 3 tasks with
``load_best_model_at_end`` (the best evaluation is the first: the highest STS-B mse is preferred), the same
run crashed as step 3 begins -- its only checkpoint, of step 2, was written before every head had
trained -- and its resume. Then per-task LoRA under ZeRO-3, and a gradient balancing method refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TASK_CONFIGS, make_config, write_config

from hfmtl.run_record import RunRecord

pytest.importorskip("deepspeed")  # the `deepspeed` extra: `make install` and CI install it

SHIM = Path(__file__).with_name("deepspeed_shim.py")
TASKS = {
    "stsb": {**TASK_CONFIGS["stsb"], "metrics": ["mse", "pearson"]},
    "rte": TASK_CONFIGS["rte"],
    "ner": TASK_CONFIGS["ner"],
}
TRAIN = {
    "max_steps": 6,
    "eval_steps": 2,
    "save_steps": 2,
    "save_total_limit": None,
    "logging_steps": 1,
    "metric_for_best_model": "stsb/mse",
    "greater_is_better": True,
    "load_best_model_at_end": True,
}
CRASH_STEP = 3
LORA = [
    "peft.mode=per_task",
    "peft.config.peft_type=LORA",
    "peft.config.r=4",
    "peft.config.target_modules=[query,value]",
]


def _launch(stage: int, config: Path, *overrides: str, crash_at: int | None = None) -> tuple[int, str]:
    """`accelerate launch` of the stage's shipped config, 2 processes; (exit status, output)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    cmd = [
        *(accelerate, "launch", "--config_file", str(REPO_ROOT / f"configs/accelerate/deepspeed_zero{stage}.yaml")),
        *("--main_process_port", port, str(SHIM), "--config", str(config), *overrides),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if crash_at is not None:
        env["HFMTL_TEST_CRASH_AT_STEP"] = str(crash_at)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env, cwd=REPO_ROOT)
    return done.returncode, done.stdout + done.stderr


def _config(encoder: str, root: Path, **train) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    data = make_config(encoder, root / "out", TASKS, samples=32, eval_samples=16, **{**TRAIN, **train})
    return write_config(root / "run.yaml", data)


def _fp32_weights(checkpoint: Path) -> dict:
    """The model's weights in a DeepSpeed checkpoint (each process holds a partition), put together by
    DeepSpeed's own reader."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint))


def _saved_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def _equal(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _trained_tasks(out: Path, until: int) -> set[str]:
    """The tasks of steps 1..`until`, from train.log (logging_steps=1: each step logs its task's loss)."""
    steps = re.findall(r"step (\d+): \{'train/(\w+)/loss'", (out / "train.log").read_text())
    return {task for step, task in steps if int(step) <= until}


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def runs(request, tiny_encoder_dir, tmp_path_factory) -> tuple[int, dict]:
    """(stage, {"whole" | "crashed" | "resumed": {"out", "code", "output"}}): the launches shared by the
    tests of one ZeRO stage."""
    stage, root = request.param, tmp_path_factory.mktemp(f"zero{request.param}")
    whole, crashed = _config(tiny_encoder_dir, root / "whole"), _config(tiny_encoder_dir, root / "crashed")
    launches = {
        "whole": _launch(stage, whole),
        "crashed": _launch(stage, crashed, crash_at=CRASH_STEP),
        "resumed": _launch(stage, crashed, "train.resume_from_checkpoint=latest"),
    }
    outs = {"whole": root / "whole" / "out", "crashed": root / "crashed" / "out", "resumed": root / "crashed" / "out"}
    return stage, {
        name: {"out": outs[name], "code": code, "output": output} for name, (code, output) in launches.items()
    }


@pytest.mark.slow
@pytest.mark.engines
def test_three_tasks_train_evaluate_and_save_the_best_model(runs):
    import torch
    from transformers import AutoModel

    import hfmtl  # noqa: F401  (registers MultiTaskModel with the Auto classes)

    stage, launched = runs
    run = launched["whole"]
    assert run["code"] == 0, run["output"][-3000:]
    named = re.findall(r"process (\d) of (\d) \(local rank \d, host [^,]+, device cpu[:0-9]*\): (.*)", run["output"])
    assert sorted(named) == [("0", "2", f"DeepSpeed ZeRO-{stage}"), ("1", "2", f"DeepSpeed ZeRO-{stage}")]
    out, record = run["out"], RunRecord.read(run["out"])
    assert record.finished and record.train["num_processes"] == 2
    assert [entry["step"] for entry in record.history] == [2, 4, 6]
    for task in TASKS:  # every task evaluated at every evaluation
        assert all(any(key.startswith(f"eval/{task}/") for key in entry) for entry in record.history)
    assert record.best_step == 2  # the first evaluation: the final model must be loaded back, not the last

    model = AutoModel.from_pretrained(out)  # the saved full model, through transformers
    assert type(model).__name__ == "MultiTaskModel" and sorted(model.config.tasks) == sorted(TASKS)
    reloaded = model.state_dict()
    best = _fp32_weights(out / "checkpoints" / "checkpoint-2")
    last = _fp32_weights(out / "checkpoints" / "checkpoint-6")
    assert _equal({k: reloaded[k] for k in best}, best)  # the best step's weights, bit for bit
    assert not _equal(best, last)
    assert not (out / "best").exists()
    assert isinstance(model(task="rte", **_batch(out))["logits"], torch.Tensor)


def _batch(out: Path) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    return dict(tokenizer(["A man plays."], ["Someone plays."], return_tensors="pt"))


@pytest.mark.slow
@pytest.mark.engines
def test_a_resume_from_a_checkpoint_before_every_head_trained_is_exact(runs):
    _, launched = runs
    whole, crashed, resumed = launched["whole"], launched["crashed"], launched["resumed"]
    assert crashed["code"] != 0 and "simulated crash" in crashed["output"], crashed["output"][-3000:]
    assert _trained_tasks(whole["out"], CRASH_STEP - 1) < set(TASKS)  # some head had not trained yet
    assert resumed["code"] == 0, resumed["output"][-3000:]
    assert re.search(r"Resumed from \S+checkpoint-2 at step 2", resumed["output"])
    assert _equal(_saved_weights(resumed["out"]), _saved_weights(whole["out"]))
    for step in (4, 6):  # the training itself, not only the best model, continued exactly
        checkpoint = f"checkpoints/checkpoint-{step}"
        assert _equal(_fp32_weights(resumed["out"] / checkpoint), _fp32_weights(whole["out"] / checkpoint))
    assert RunRecord.read(resumed["out"]).history == RunRecord.read(whole["out"]).history


@pytest.mark.slow
@pytest.mark.engines
def test_per_task_lora_under_zero3(tiny_encoder_dir, tmp_path):
    from transformers import AutoModel

    import hfmtl  # noqa: F401

    code, output = _launch(3, _config(tiny_encoder_dir, tmp_path, max_steps=4, save_steps=None), *LORA)
    assert code == 0, output[-3000:]
    out = tmp_path / "out"
    saved = json.loads((out / "config.json").read_text())
    assert saved["peft"]["adapters"] == list(TASKS) and not (out / "model.safetensors").exists()
    best = RunRecord.read(out).best_step
    assert f"Loaded the best model (step {best}," in output
    model = AutoModel.from_pretrained(out)  # the adapters of the best step, through transformers
    trained = _trained_tasks(out, best)
    lora_b = {name: tensor for name, tensor in model.state_dict().items() if "lora_B" in name}
    for task in TASKS:  # LoRA's B matrices start at zero: they moved exactly where their task trained
        moved = [tensor.abs().sum() > 0 for name, tensor in lora_b.items() if f".{task}." in name]
        assert moved and all(moved) == (task in trained) and any(moved) == (task in trained), (task, trained)


@pytest.mark.slow
@pytest.mark.engines
def test_a_gradient_balancing_method_is_refused_before_training(tiny_encoder_dir, tmp_path):
    config = _config(tiny_encoder_dir, tmp_path)
    code, output = _launch(2, config, "balancing.step=all_tasks", "balancing.method=pcgrad")
    assert code != 0
    expected = "balancing.method='pcgrad' combines per-task gradients, which DeepSpeed ZeRO-2 does not give back"
    assert output.count("error: ") == 2 and output.count(expected) == 2, output[-3000:]
    assert output.count("use a loss weighting (e.g. balancing.method=equal or uncertainty)") == 2
    assert "Traceback" not in output.split("error: ")[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written


# --- the run config's accumulation and clipping in DeepSpeed's config (no launch: the plugin is real) ---


def _deepspeed_accelerator(**plugin):
    from types import SimpleNamespace

    from accelerate.utils import DeepSpeedPlugin, DistributedType

    return SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED,
        state=SimpleNamespace(deepspeed_plugin=DeepSpeedPlugin(zero_stage=2, **plugin)),
    )


def _run_config(encoder: str, tmp_path: Path, **train):
    from hfmtl.config import config_from_dict

    return config_from_dict(make_config(encoder, tmp_path / "out", {"rte": TASK_CONFIGS["rte"]}, **train))


@pytest.mark.parametrize(("max_grad_norm", "clipping"), [(0.5, 0.5), (None, 0.0)])
def test_auto_values_take_the_run_config(max_grad_norm, clipping, tiny_encoder_dir, tmp_path):
    from hfmtl.training.deepspeed_config import align_deepspeed_config

    accelerator = _deepspeed_accelerator(gradient_accumulation_steps="auto")  # gradient_clipping: auto
    config = _run_config(tiny_encoder_dir, tmp_path, max_grad_norm=max_grad_norm, gradient_accumulation_steps=3)
    align_deepspeed_config(config, accelerator)
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    assert ds_config["gradient_clipping"] == clipping and ds_config["gradient_accumulation_steps"] == 3


@pytest.mark.parametrize(
    ("plugin", "train", "expected"),
    [
        ({"gradient_accumulation_steps": 1}, {"gradient_accumulation_steps": 4}, "train.gradient_accumulation_steps=4"),
        ({"gradient_clipping": 1.0}, {"max_grad_norm": 0.5}, "train.max_grad_norm=0.5 but the DeepSpeed config"),
    ],
    ids=["accumulation", "clipping"],
)
def test_a_deepspeed_value_that_differs_is_refused(plugin, train, expected, tiny_encoder_dir, tmp_path):
    from hfmtl.errors import ConfigError
    from hfmtl.training.deepspeed_config import align_deepspeed_config

    with pytest.raises(ConfigError, match=re.escape(expected)) as caught:
        align_deepspeed_config(_run_config(tiny_encoder_dir, tmp_path, **train), _deepspeed_accelerator(**plugin))
    assert "DeepSpeed's value would win" in str(caught.value) and "\n" not in str(caught.value)
