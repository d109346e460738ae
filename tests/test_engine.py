"""Precision and compilation: the config wins, the launcher decides what the config leaves unset, a
setting that cannot apply is refused before anything is written, and a compiled run saves a model that
reloads with its trained weights."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import (
    REPO_ROOT,
    TASK_CONFIGS,
    assert_reloaded_logits_equal,
    encode,
    make_config,
    reset_accelerate_state,
    run_recipe,
    write_config,
)
from launching import accelerate_launch
from safetensors.torch import load_file

from hfmtl import ConfigError, load_config
from hfmtl.training.setup import build_accelerator, compile_backend

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

TWO_TASKS = {"rte": TASK_CONFIGS["rte"], "ner": TASK_CONFIGS["ner"]}


def _config(tiny_encoder_dir, tmp_path, **train):
    return write_config(tmp_path / "run.yaml", make_config(tiny_encoder_dir, tmp_path / "out", TWO_TASKS, **train))


def test_the_launcher_decides_the_precision_the_config_leaves_unset(tiny_encoder_dir, tmp_path, monkeypatch, caplog):
    # what `accelerate launch --mixed_precision bf16` (or `accelerate config`) hands the process
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    cfg = _config(tiny_encoder_dir, tmp_path, max_steps=2, eval_steps=None)
    run_recipe(cfg)
    used = json.loads((tmp_path / "out" / "metrics.json").read_text())["train"]
    assert used["mixed_precision"] == "bf16"
    assert "mixed precision bf16 (from the launcher" in (tmp_path / "out" / "train.log").read_text()
    assert "Mixed precision: bf16; not compiled; 1 process." in (tmp_path / "out" / "README.md").read_text()


def test_a_precision_in_the_config_wins_over_the_launcher(tiny_encoder_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    accelerator = build_accelerator(
        load_config(_config(tiny_encoder_dir, tmp_path), ["train.mixed_precision='no'"]), cpu=True
    )
    assert accelerator.mixed_precision == "no"


@pytest.mark.parametrize("source", ["config", "launcher"])
def test_fp16_on_the_cpu_is_refused_before_anything_is_written(tiny_encoder_dir, tmp_path, monkeypatch, capsys, source):
    cfg = _config(tiny_encoder_dir, tmp_path)
    overrides = ["train.mixed_precision=fp16"] if source == "config" else []
    if source == "launcher":
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ConfigError, match=r"fp16 \(from .*\) has no autocast on 'cpu'.*use bf16 or no"):
        run_recipe(cfg, *overrides)
    assert not (tmp_path / "out").exists()


def test_the_launcher_decides_compilation_the_config_leaves_unset(tiny_encoder_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")  # accelerate launch --dynamo_backend inductor
    cfg = load_config(_config(tiny_encoder_dir, tmp_path))
    assert compile_backend(build_accelerator(cfg, cpu=True)) == "inductor"
    reset_accelerate_state()
    cfg.train.torch_compile = False  # the config's no wins
    assert compile_backend(build_accelerator(cfg, cpu=True)) is None


def test_an_unknown_compile_backend_is_one_line(tiny_encoder_dir, tmp_path):
    with pytest.raises(
        ConfigError, match="train.torch_compile_backend='turbo' is not allowed; choose one of .*'inductor'"
    ):
        run_recipe(_config(tiny_encoder_dir, tmp_path), "train.torch_compile_backend=turbo")


def test_a_compiled_run_saves_and_reloads_its_best_weights(tiny_encoder_dir, tmp_path):
    """The Accelerator wraps the model in torch.compile's OptimizedModule, whose state dict names every
    weight under `_orig_mod.`: saved so, AutoModel would load a model with random weights. The eager
    backend wraps the model as every backend does, in 12 s here against aot_eager's 24 s (aot_eager, the
    tracing inductor also does, runs in test_accelerate_launch_flags_reach_the_run)."""
    cfg = _config(tiny_encoder_dir, tmp_path, max_steps=6, eval_steps=3)
    trainer = run_recipe(cfg, "train.torch_compile=true", "train.torch_compile_backend=eager")
    out = tmp_path / "out"
    assert isinstance(trainer.model, torch._dynamo.eval_frame.OptimizedModule)
    saved = load_file(out / "model.safetensors")
    assert not [k for k in saved if "_orig_mod" in k]
    model = trainer.unwrapped_model().eval()
    assert [k for k, v in model.state_dict().items() if not torch.equal(v, saved[k])] == []
    reloaded = transformers.AutoModel.from_pretrained(out).eval()
    batch = encode(tiny_encoder_dir, "hello world")
    for task in TWO_TASKS:
        assert_reloaded_logits_equal(reloaded(task=task, **batch).logits, model(task=task, **batch).logits)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["torch_compile"] == "eager"
    assert f"Loaded the best model (step {metrics['best']['step']}," in (out / "train.log").read_text()
    assert "compiled with torch.compile (eager)" in (out / "README.md").read_text()


@pytest.mark.slow
def test_accelerate_launch_flags_reach_the_run(tiny_encoder_dir, tmp_path):
    """The issue as a user met it: `accelerate launch --mixed_precision bf16 --dynamo_backend ...`."""
    cfg = _config(tiny_encoder_dir, tmp_path, max_steps=2, eval_steps=None)
    script = [REPO_ROOT / "recipes" / "train.py", "--cpu", "--config", cfg]
    launch = {"processes": 1, "launcher_args": ["--num_machines", "1"]}
    proc = accelerate_launch(script, **launch, mixed_precision="bf16", dynamo_backend="aot_eager")
    assert proc.returncode == 0, proc.stderr[-3000:]
    used = json.loads((tmp_path / "out" / "metrics.json").read_text())["train"]
    assert (used["mixed_precision"], used["torch_compile"]) == ("bf16", "aot_eager")
    assert not [k for k in load_file(tmp_path / "out" / "model.safetensors") if "_orig_mod" in k]
