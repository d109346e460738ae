"""Balancing inside the real training loop: every strategy trains in the all-tasks step, the gradient
methods replace the shared gradient and leave each head its own task's gradient, learned weights are
checkpointed (exact resume), and bad settings are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TASK_CONFIGS, CrashAt, make_config, reset_accelerate_state, run_recipe, write_config
from safetensors.torch import load_file

from hfmtl import ConfigError, MultiTaskModel, load_config
from hfmtl.balancing import BALANCERS, get_balancer
from hfmtl.training.callbacks import TrainerCallback
from hfmtl.training.checkpointing import latest_checkpoint
from hfmtl.training.steps import _shared_gradients, _write_shared_gradient

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

TASKS = {"rte": TASK_CONFIGS["rte"], "stsb": TASK_CONFIGS["stsb"], "ner": TASK_CONFIGS["ner"]}


REQUIRED_OPTIONS = {"fixed": {"weights": {"rte": 1.0, "stsb": 0.5, "ner": 2.0}}}


def config_for(encoder: str, out, method: str, step: str = "all_tasks", **train) -> dict:
    config = make_config(encoder, out, TASKS, samples=32, eval_samples=16, **train)
    config["balancing"] = {"step": step, "method": method, "options": REQUIRED_OPTIONS.get(method, {})}
    return config


@pytest.mark.parametrize("method", sorted(BALANCERS))
def test_every_strategy_trains_in_the_all_tasks_step(method, tiny_encoder_dir, tmp_path):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", config_for(tiny_encoder_dir, out, method, max_steps=3, logging_steps=3))
    trainer = run_recipe(cfg)
    assert trainer.state.global_step == 3
    # every task trained at every step: one batch of each task per step
    assert {name: p["batches"] for name, p in trainer.state.positions.items()} == {"rte": 3, "stsb": 3, "ner": 3}
    log = (out / "train.log").read_text()
    assert f"balancing: {method}, all tasks per step" in log
    last = [line for line in log.splitlines() if "INFO hfmtl: step 3: {" in line][-1]
    for task in TASKS:
        assert f"'train/{task}/loss'" in last and f"'train/{task}/weight'" in last
    assert "nan" not in last and "inf" not in last
    assert torch.isfinite(torch.stack([p.detach().float().sum() for p in trainer.model.parameters()])).all()


def test_shared_gradients_are_each_tasks_own_and_written_back_in_place(tiny_encoder_dir):
    from transformers import AutoTokenizer

    specs = {
        "a": {"type": "regression", "num_labels": 1, "problem_type": "regression"},
        "b": {"type": "regression", "num_labels": 1, "problem_type": "regression"},
    }
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, specs).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    batch = dict(tokenizer(["a short one", "and a second sentence"], padding=True, return_tensors="pt"))
    batches = {"a": {**batch, "labels": torch.tensor([1.0, 2.0])}, "b": {**batch, "labels": torch.tensor([-3.0, 0.5])}}
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    losses = model(task_batches=batches).task_losses
    grads = _shared_gradients(losses, ["a", "b"], params)
    for row, name in enumerate(["a", "b"]):  # equal to a plain backward of that task alone
        model.zero_grad()
        model(task=name, **batches[name]).loss.backward()
        expected = torch.cat([p.grad.reshape(-1) for p in params])
        torch.testing.assert_close(grads[row], expected, rtol=1e-5, atol=1e-7)
    combined = get_balancer("pcgrad", ["a", "b"], seed=0)(grads, ["a", "b"])
    _write_shared_gradient(params, combined.grad)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in params]), combined.grad)


def test_a_stateful_strategy_resumes_exactly(tiny_encoder_dir, tmp_path):
    """N all-tasks steps straight == N/2, a crash, and a resume: identical weights and DWA history."""
    common = {"max_steps": 6, "save_steps": 3, "eval_steps": None, "load_best_model_at_end": False}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cfg_a = config_for(tiny_encoder_dir, straight, "dwa", **common)
    cfg_a["balancing"]["options"] = {"window_steps": 2}
    run_recipe(write_config(tmp_path / "a.yaml", cfg_a))

    cfg_b = config_for(tiny_encoder_dir, resumed, "dwa", **common)
    cfg_b["balancing"]["options"] = {"window_steps": 2}
    cfg = write_config(tmp_path / "b.yaml", cfg_b)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(cfg, callbacks=[CrashAt(5)])  # dies after checkpoint-3, mid-run
    assert latest_checkpoint(resumed).name == "checkpoint-3"
    reset_accelerate_state()
    run_recipe(cfg, "train.resume_from_checkpoint=latest")
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert (
        json.loads((straight / "metrics.json").read_text())["history"]
        == json.loads((resumed / "metrics.json").read_text())["history"]
    )


def test_uncertainty_weighting_learns_its_log_variances_with_one_task_per_step(tiny_encoder_dir, tmp_path):
    out = tmp_path / "out"
    config = config_for(tiny_encoder_dir, out, "uncertainty", step="one_task", max_steps=6, learning_rate=0.05)
    trainer = run_recipe(write_config(tmp_path / "run.yaml", config))
    learned = torch.cat([p.detach().reshape(-1) for p in trainer.runner.balancer.parameters()])
    assert learned.abs().max() > 0  # they moved from their initial 0
    assert any(g.get("name") == "balancer" and g["weight_decay"] == 0.0 for g in trainer.optimizer.param_groups)


@pytest.mark.parametrize(("options", "lr"), [({}, 1e-2), ({"lr": 0.2}, 0.2)])
def test_uncertainty_log_variances_train_at_their_own_learning_rate(options, lr, tiny_encoder_dir, tmp_path):
    """At an encoder's fine-tuning rate the log-variances would barely move (Adam: about lr per step)."""
    config = config_for(tiny_encoder_dir, tmp_path / "out", "uncertainty", max_steps=4, learning_rate=1e-5)
    config["balancing"]["options"] = options
    trainer = run_recipe(write_config(tmp_path / "run.yaml", config))
    group = next(g for g in trainer.optimizer.param_groups if g.get("name") == "balancer")
    assert group["initial_lr"] == lr and group["weight_decay"] == 0.0
    model_group = next(g for g in trainer.optimizer.param_groups if g.get("name") != "balancer")
    assert model_group["initial_lr"] == 1e-5
    moved = max(abs(float(p.detach())) for p in trainer.runner.balancer.parameters())
    assert moved > 100 * 4 * 1e-5, moved  # far more than 4 steps at the model's rate could move them


def test_tasks_per_step_draws_a_seeded_subset(tiny_encoder_dir, tmp_path):
    config = config_for(tiny_encoder_dir, tmp_path / "out", "equal", max_steps=4)
    config["balancing"]["tasks_per_step"] = 2
    trained = []

    class Record(TrainerCallback):
        def on_step_end(self, trainer, step, task_names):
            trained.append(task_names)

    trainer = run_recipe(write_config(tmp_path / "run.yaml", config), callbacks=[Record()])
    k = trainer.config.balancing.tasks_per_step
    draws = [trainer.sampler.tasks_of_step(step, k) for step in range(20)]
    assert all(len(d) == 2 and len(set(d)) == 2 for d in draws)
    assert draws == [trainer.sampler.tasks_of_step(step, k) for step in range(20)]  # a function of the step alone
    assert len({tuple(d) for d in draws}) > 1
    assert trained == draws[:4]  # what the 4 steps trained


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["balancing.method=pcgrad"], "balancing.method='pcgrad' weighs several tasks within one step"),
        (["balancing.step=all_tasks", "balancing.method=pcgard"], "balancing.method='pcgard' is not allowed"),
        (["balancing.tasks_per_step=2"], "balancing.tasks_per_step applies to balancing.step=all_tasks"),
    ],
)
def test_bad_balancing_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config("configs/tiny.yaml", overrides)


def test_gradient_similarity_is_tracked_during_training(tiny_encoder_dir, tmp_path):
    out = tmp_path / "out"
    config = make_config(tiny_encoder_dir, out, TASKS, samples=32, eval_samples=16, max_steps=4)
    config["train"]["gradient_similarity_steps"] = 2
    trainer = run_recipe(write_config(tmp_path / "run.yaml", config))
    record = json.loads((out / "gradient_similarity.json").read_text())
    assert record["tasks"] == list(TASKS) and record["steps"] == [2, 4]
    mean = torch.tensor(record["mean"])
    assert mean.shape == (3, 3) and torch.allclose(mean.diagonal(), torch.ones(3)) and torch.allclose(mean, mean.T)
    assert (out / "gradient_similarity.png").read_bytes()[:4] == b"\x89PNG"
    # the probes used their own loader: the training loaders moved by the training steps alone
    assert sum(p["batches"] for p in trainer.state.positions.values()) == 4
