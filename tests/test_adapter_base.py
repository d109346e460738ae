"""A model saved as adapters names its base encoder so that it loads from any directory, and can be
pointed at a base encoder that moved (``base_model=``, ``--base-model``)."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import (
    DATA,
    TASK_CONFIGS,
    assert_reloaded_logits_equal,
    make_config,
    reset_accelerate_state,
    run_recipe,
    write_config,
)

from hfmtl import MultiTaskModel, cli
from hfmtl.errors import ConfigError
from hfmtl.inference import Predictor

LORA = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}
PAIRS = [("A man plays a guitar.", "A man plays music."), ("It rains.", "The street is dry and the sun shines.")]


def _logits(predictor: Predictor):
    inputs = predictor.tokenizer([p for p, _ in PAIRS], [h for _, h in PAIRS], padding=True, return_tensors="pt")
    return predictor.model(task="rte", **inputs).logits.detach()


def test_a_lora_model_on_a_relative_base_loads_anywhere_and_follows_a_moved_base(
    tiny_encoder_dir, tmp_path, monkeypatch, capsys
):
    work, elsewhere, out = tmp_path / "work", tmp_path / "elsewhere", tmp_path / "out"
    shutil.copytree(tiny_encoder_dir, work / "models" / "base")
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    config = make_config("models/base", out, {"rte": TASK_CONFIGS["rte"]}, samples=16)  # relative, as users write
    config["train"].update(max_steps=2, eval_steps=2)
    config["peft"] = {"config": LORA, "mode": "shared"}
    reset_accelerate_state()
    run_recipe(write_config(tmp_path / "run.yaml", config))
    base = str((work / "models" / "base").resolve())
    assert json.loads((out / "config.json").read_text())["peft"]["base_model"] == base

    monkeypatch.chdir(elsewhere)  # the relative path would now name nothing
    expected = _logits(Predictor.from_pretrained(str(out), device="cpu"))

    moved = tmp_path / "moved"
    shutil.move(work / "models" / "base", moved)
    with pytest.raises(ConfigError) as err:
        Predictor.from_pretrained(str(out), device="cpu")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"peft.base_model={base!r}: the directory {base!r} does not")
    assert f"need their base encoder {base!r}" in message
    assert "base_model=..." in message and "--base-model (hfmtl predict)" in message
    source = tmp_path / "in.jsonl"
    source.write_text((DATA / "rte" / "validation.jsonl").read_text().splitlines()[0] + "\n")
    capsys.readouterr()
    assert cli.main(["predict", str(out), "--task", "rte", "--input", str(source)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: peft.base_model={base!r}"), error

    # re-pointed (relative to the current directory, as any path argument), the logits are the original's
    repointed = Predictor.from_pretrained(str(out), device="cpu", base_model="../moved")
    assert repointed.model.config.peft["base_model"] == str(moved.resolve())
    assert_reloaded_logits_equal(_logits(repointed), expected)
    assert MultiTaskModel.from_pretrained(out, base_model=str(moved)).config.peft["base_model"] == str(moved.resolve())
    output = tmp_path / "out.jsonl"
    argv = ["predict", str(out), "--task", "rte", "--input", str(source), "--output", str(output)]
    assert cli.main([*argv, "--base-model", "../moved"]) == 0
    assert "label" in json.loads(output.read_text())["prediction"]


def test_base_model_for_a_whole_model_is_one_line(tiny_encoder_dir, tmp_path):
    MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": {"type": "regression", "num_labels": 1}}).save_pretrained(
        tmp_path
    )
    with pytest.raises(ConfigError, match="holds a whole model, not adapters on a base encoder; leave base_model out"):
        MultiTaskModel.from_pretrained(tmp_path, base_model=tiny_encoder_dir)
