"""The real recipe on the real pretrained MiniLM encoder and configs/tiny.yaml: a few steps, for real."""

from __future__ import annotations

import argparse
import json
import runpy

import pytest
import transformers
from conftest import MINILM, REPO_ROOT, assert_reloaded_logits_equal

import hfmtl

pytestmark = pytest.mark.slow


def test_tiny_config_on_minilm_trains_and_reloads(tmp_path, monkeypatch):
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    monkeypatch.chdir(REPO_ROOT)  # the config's data paths are relative to the repository root
    out = tmp_path / "minilm"
    recipe = runpy.run_path(str(REPO_ROOT / "recipes" / "train.py"), run_name="recipe_train")
    args = argparse.Namespace(
        config="configs/tiny.yaml",
        overrides=[f"train.output_dir={out}", "train.max_steps=6", "train.eval_steps=6", "train.save_steps=null"],
        cpu=True,
    )
    trainer = recipe["run"](args)

    model = trainer.accelerator.unwrap_model(trainer.model)
    assert model.config.encoder.hidden_size == 384 and model.config.encoder.num_hidden_layers == 6
    # the encoder started from the pretrained weights (not a random init) and was trained from there
    pretrained = transformers.AutoModel.from_pretrained(MINILM).state_dict()
    word_embeddings = model.encoder.state_dict()["embeddings.word_embeddings.weight"]
    drift = (word_embeddings - pretrained["embeddings.word_embeddings.weight"]).abs().max().item()
    assert 0 < drift < 0.01

    metrics = json.loads((out / "metrics.json").read_text())["history"][-1]
    assert {"eval/rte/accuracy", "eval/stsb/pearson", "eval/ner/f1", "eval/mean"} <= set(metrics)
    reloaded = transformers.AutoModel.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["EU rejects German call to boycott British lamb ."], return_tensors="pt")
    model.eval()
    for task in ("rte", "stsb", "ner"):
        assert_reloaded_logits_equal(reloaded(task=task, **batch).logits, model(task=task, **batch).logits)
    assert isinstance(reloaded, hfmtl.MultiTaskModel)
