"""The training recipe run for real, in-process, on the tiny encoder and real data slices: outputs,
exact resume, atomic checkpoints, the CLI, evaluation of a saved model, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers
import yaml
from conftest import (
    TASK_CONFIGS,
    CrashAt,
    assert_reloaded_logits_equal,
    encode,
    make_config,
    reset_accelerate_state,
    run_recipe,
    write_config,
)
from safetensors.torch import load_file

import hfmtl
from hfmtl import cli
from hfmtl.training.callbacks import TrainerCallback
from hfmtl.training.checkpointing import latest_checkpoint, list_checkpoints

TWO_TASKS = {"rte": TASK_CONFIGS["rte"], "ner": TASK_CONFIGS["ner"]}


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def test_run_writes_a_reloadable_model_and_its_records(tiny_encoder_dir, tmp_path):
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path / "run.yaml",
        make_config(tiny_encoder_dir, out, TWO_TASKS, max_steps=8, eval_steps=4, save_steps=4, save_total_limit=1),
    )
    trainer = run_recipe(cfg)

    for name in ("config.json", "model.safetensors", "tokenizer.json", "config.yaml", "metrics.json", "train.log"):
        assert (out / name).is_file(), name
    assert not (out / "best").exists()  # folded into the final model
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-8"]  # save_total_limit=1

    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["step"] for e in metrics["history"]] == [4, 8]
    for entry in metrics["history"]:
        assert {"eval/rte/accuracy", "eval/ner/f1", "eval/mean"} <= set(entry)
        assert entry["eval/mean"] == pytest.approx((entry["eval/rte/accuracy"] + entry["eval/ner/f1"]) / 2)
    best = max(metrics["history"], key=lambda e: e["eval/mean"])
    assert metrics["best"] == {"step": best["step"], "metric": "eval/mean", "value": best["eval/mean"]}

    # the resolved config round-trips, and the saved model is the in-memory one
    assert hfmtl.load_config(out / "config.yaml").to_dict() == hfmtl.load_config(cfg).to_dict()
    reloaded = transformers.AutoModel.from_pretrained(out).eval()
    assert isinstance(reloaded, hfmtl.MultiTaskModel)
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    saved = load_file(out / "model.safetensors")
    assert [k for k, v in model.state_dict().items() if not torch.equal(v, saved[k])] == []
    batch = encode(tiny_encoder_dir, "hello world")
    for task in ("rte", "ner"):
        assert_reloaded_logits_equal(reloaded(task=task, **batch).logits, model(task=task, **batch).logits)
    # and it holds the weights of the best evaluation
    assert f"Loaded the best model (step {best['step']}," in (out / "train.log").read_text()


def test_a_lower_is_better_main_metric_keeps_its_lowest_checkpoint(tiny_encoder_dir, tmp_path):
    stsb = {**TASK_CONFIGS["stsb"], "metrics": ["mse", "pearson"]}  # main metric: mse
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path / "run.yaml", make_config(tiny_encoder_dir, out, {"stsb": stsb}, max_steps=12, eval_steps=2)
    )
    trainer = run_recipe(cfg)

    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    assert len({e["eval/stsb/mse"] for e in history}) > 1  # the choice of a checkpoint matters
    lowest = min(history, key=lambda e: e["eval/stsb/mse"])
    assert metrics["best"]["step"] == lowest["step"]
    assert all(e["eval/mean"] == pytest.approx(-e["eval/stsb/mse"]) for e in history)
    assert metrics["greater_is_better"] == {"eval/stsb/mse": False, "eval/stsb/pearson": True, "eval/mean": True}
    # the saved weights are the lowest-mse step's
    assert trainer.evaluate()["eval/stsb/mse"] == pytest.approx(lowest["eval/stsb/mse"], rel=1e-5)
    assert f"mse ↓ {lowest['eval/stsb/mse']:.4f}" in (out / "README.md").read_text()


def test_callbacks_see_every_hook_in_order_with_its_outputs_written(tiny_encoder_dir, tmp_path):
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path / "run.yaml", make_config(tiny_encoder_dir, out, TWO_TASKS, max_steps=4, eval_steps=2, save_steps=2)
    )
    seen, trained = [], {"rte": 0, "ner": 0}

    class Witness(TrainerCallback):
        def on_train_begin(self, trainer):
            seen.append(("train_begin", trainer.state.global_step))

        def on_step_begin(self, trainer, step, task_names):
            seen.append(("step_begin", step, trainer.state.global_step))

        def on_step_end(self, trainer, step, task_names):
            assert trainer.state.global_step == step and len(task_names) == 1
            trained[task_names[0]] += 1
            seen.append(("step_end", step))

        def on_evaluate(self, trainer, step, results):
            metrics = json.loads((out / "metrics.json").read_text())  # already holds this evaluation
            assert metrics["history"][-1] == {"step": step, "epoch": metrics["history"][-1]["epoch"], **results}
            assert "train" not in metrics
            seen.append(("evaluate", step))

        def on_save(self, trainer, step, directory):
            assert directory == latest_checkpoint(out) and directory.name == f"checkpoint-{step}"
            seen.append(("save", step))

        def on_train_end(self, trainer):
            # the final model and metrics.json first, then the config's side jobs (the card), then this one
            assert (out / "model.safetensors").is_file() and not (out / "best").exists()
            assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 4
            assert (out / "README.md").is_file()
            seen.append(("train_end",))

    trainer = run_recipe(cfg, callbacks=[Witness()])
    assert seen == [
        ("train_begin", 0),
        ("step_begin", 1, 0),
        ("step_end", 1),
        ("step_begin", 2, 1),
        ("step_end", 2),
        ("evaluate", 2),
        ("save", 2),
        ("step_begin", 3, 2),
        ("step_end", 3),
        ("step_begin", 4, 3),
        ("step_end", 4),
        ("evaluate", 4),
        ("save", 4),
        ("train_end",),
    ]
    # the task names a step announced are the ones it trained: one batch each
    assert trained == {name: p["batches"] for name, p in trainer.state.positions.items()}


def test_a_task_metric_can_choose_the_best_checkpoint(tiny_encoder_dir, tmp_path):
    """train.metric_for_best_model: the lowest STS-B mse wins, whatever the other task does."""
    tasks = {"rte": TASK_CONFIGS["rte"], "stsb": {**TASK_CONFIGS["stsb"], "metrics": ["mse", "pearson"]}}
    out = tmp_path / "out"
    cfg = make_config(tiny_encoder_dir, out, tasks, max_steps=12, eval_steps=2, metric_for_best_model="stsb/mse")
    trainer = run_recipe(write_config(tmp_path / "run.yaml", cfg))

    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    lowest = min(history, key=lambda e: e["eval/stsb/mse"])
    assert len({e["eval/stsb/mse"] for e in history}) > 1
    assert metrics["best"] == {"step": lowest["step"], "metric": "eval/stsb/mse", "value": lowest["eval/stsb/mse"]}
    assert metrics["greater_is_better"]["eval/stsb/mse"] is False
    assert trainer.evaluate()["eval/stsb/mse"] == pytest.approx(lowest["eval/stsb/mse"], rel=1e-5)
    assert f"Loaded the best model (step {lowest['step']}, eval/stsb/mse " in (out / "train.log").read_text()


def test_resume_continues_exactly(tiny_encoder_dir, tmp_path):
    """N steps straight == N/2 steps, a crash, and a resume for the rest: identical weights."""
    common = {"max_steps": 10, "save_steps": 5, "eval_steps": None, "load_best_model_at_end": False}
    straight = tmp_path / "straight"
    run_recipe(write_config(tmp_path / "a.yaml", make_config(tiny_encoder_dir, straight, TWO_TASKS, **common)))

    resumed = tmp_path / "resumed"
    cfg = write_config(tmp_path / "b.yaml", make_config(tiny_encoder_dir, resumed, TWO_TASKS, **common))
    with pytest.raises(KeyboardInterrupt):
        run_recipe(cfg, callbacks=[CrashAt(8)])  # dies after checkpoint-5, mid-run
    assert latest_checkpoint(resumed).name == "checkpoint-5"
    reset_accelerate_state()
    run_recipe(cfg, "train.resume_from_checkpoint=latest")

    a = load_file(straight / "model.safetensors")
    b = load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    mismatched = [k for k in a if not torch.equal(a[k], b[k])]
    assert mismatched == []
    history_a = json.loads((straight / "metrics.json").read_text())["history"]
    history_b = json.loads((resumed / "metrics.json").read_text())["history"]
    assert history_a == history_b


def test_unfinished_checkpoint_is_never_resumed(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "checkpoint-4").mkdir(parents=True)
    (root / "checkpoint-12.tmp").mkdir()  # a save that crashed half-way
    (root / "checkpoint-8").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-8"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-8"


def test_cli_train_then_eval_reproduces_the_final_metrics(tiny_encoder_dir, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path / "run.yaml",
        make_config(tiny_encoder_dir, out, TWO_TASKS, max_steps=4, load_best_model_at_end=False),
    )
    assert cli.main(["train", str(cfg), "train.train_sampling_strategy=group_by_length"]) == 0
    final = json.loads((out / "metrics.json").read_text())["history"][-1]

    reset_accelerate_state()
    assert cli.main(["eval", str(out), "--config", str(cfg), "--cpu"]) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results.keys() == {k for k in final if k.startswith("eval/")}
    for key, value in results.items():
        assert value == pytest.approx(final[key], abs=1e-6), key
    assert "eval/rte/accuracy" in capsys.readouterr().out


def _bad_input_cases(tiny_encoder_dir, out):
    rte = dict(TASK_CONFIGS["rte"])
    missing_file = {**rte, "data_files": {"train": "no/such/train.jsonl", "validation": "no/such/dev.jsonl"}}
    bad_column = {**rte, "text_pair_column": "hypothesis"}
    bad_labels = {**rte, "label_names": ["only_one"]}
    return {
        "missing data file": ({"rte": missing_file}, "does not exist"),
        "missing column": ({"rte": bad_column}, "'hypothesis'"),
        "label outside the label set": ({"rte": bad_labels}, "outside the label set"),
        "unknown task type": ({"rte": {**rte, "type": "clasification"}}, "did you mean 'classification'"),
        "hub dataset offline": (
            {"rte": {k: v for k, v in rte.items() if k != "data_files"} | {"dataset": "nyu-mll/glue", "subset": "rte"}},
            "Couldn't reach 'nyu-mll/glue'",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["missing data file", "missing column", "label outside the label set", "unknown task type", "hub dataset offline"],
)
def test_bad_input_is_one_line_and_leaves_no_output(tiny_encoder_dir, tmp_path, capsys, case):
    out = tmp_path / "out"
    tasks, expected = _bad_input_cases(tiny_encoder_dir, out)[case]
    cfg = write_config(tmp_path / "run.yaml", make_config(tiny_encoder_dir, out, tasks))
    assert cli.main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # progress bars of the tokenization may come before it
    assert last.startswith("error: ") and expected in last, err
    assert err.count("error: ") == 1
    assert not out.exists()


def test_console_script_exits_2_on_a_config_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name_or_path": "x"}, "tasks": {}, "train": {"output_dir": "o"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "hfmtl.cli", "train", str(cfg), "train.max_step=3"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: train.max_step is not a key of train; did you mean 'max_steps'?"


def test_unknown_encoder_is_one_line(tiny_encoder_dir, tmp_path, capsys):
    cfg_dict = make_config(tiny_encoder_dir, tmp_path / "out", {"rte": TASK_CONFIGS["rte"]})
    cfg_dict["model"]["name_or_path"] = "no-such-org/no-such-encoder"
    assert cli.main(["train", str(write_config(tmp_path / "run.yaml", cfg_dict))]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "model.name_or_path='no-such-org/no-such-encoder'" in err
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_non_empty_output_dir(tiny_encoder_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    cfg = write_config(tmp_path / "run.yaml", make_config(tiny_encoder_dir, out, TWO_TASKS))
    assert cli.main(["train", str(cfg)]) == 2
    assert "overwrite_output_dir" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


def test_bf16_and_accumulation_and_tensorboard_run(tiny_encoder_dir, tmp_path):
    """bf16 autocast on CPU runs (slowly: speed is not tested here), with accumulation and a tracker."""
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path / "run.yaml",
        make_config(
            tiny_encoder_dir,
            out,
            {"rte": TASK_CONFIGS["rte"]},
            samples=32,
            max_steps=2,
            gradient_accumulation_steps=2,
            weight_decay=0.05,
            mixed_precision="bf16",
            report_to=["tensorboard"],
        ),
    )
    trainer = run_recipe(cfg)
    assert trainer.state.global_step == 2
    assert trainer.state.positions["rte"]["batches"] == 4  # 2 steps x 2 micro-batches
    assert trainer.scheduler.last_epoch == 2  # the schedule advanced once per optimizer step
    # weight decay from the config on matrices, none on biases and norm weights
    groups = trainer.optimizer.param_groups
    assert {g["weight_decay"] for g in groups} == {0.05, 0.0}
    for group in groups:
        assert all((p.ndim >= 2) == (group["weight_decay"] == 0.05) for p in group["params"])
    assert list(out.glob("**/events.out.tfevents.*"))


def test_eval_of_a_missing_model_is_one_line(tmp_path, capsys):
    cfg = write_config(tmp_path / "run.yaml", make_config(str(tmp_path), tmp_path / "out", TWO_TASKS))
    assert cli.main(["eval", str(tmp_path / "no-model"), "--config", str(cfg), "--cpu"]) == 2
    err = capsys.readouterr().err
    missing = str(tmp_path / "no-model")
    assert "Traceback" not in err and err.count("error: ") == 1
    assert (
        err.strip().splitlines()[-1].startswith(f"error: model={missing!r}: the directory {missing!r} does not exist")
    )
