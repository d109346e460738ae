"""Saved weights load back into an existing model (the best model at the end of a run, the final model a
resume takes over) when its encoder ties parameters: a whole BART's token embeddings are one tensor under
three names, saved once. And a BART backbone (its encoder stack) runs to the end with
``load_best_model_at_end``, which used to crash there with no final model."""

from __future__ import annotations

import pytest
import torch
from conftest import TASK_CONFIGS, make_config, run_recipe, write_config
from transformers import AutoTokenizer, BartConfig, BartModel

from hfmtl import MultiTaskConfig, MultiTaskModel
from hfmtl.errors import HfmtlError
from hfmtl.run_record import RunRecord

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _tiny_bart(vocab_size: int, pad_token_id: int = 0) -> BartConfig:
    return BartConfig(
        vocab_size=vocab_size,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=80,
        pad_token_id=pad_token_id,
    )


def test_tied_parameters_load_back_into_an_existing_model(tmp_path):
    heads = {"a": {"type": "classification", "num_labels": 2, "id2label": {0: "x", 1: "y"}}}
    config = MultiTaskConfig(encoder=_tiny_bart(120).to_dict(), tasks=heads, pooling="cls")

    def whole_bart_model(seed: int) -> MultiTaskModel:  # the whole encoder-decoder, embeddings tied
        torch.manual_seed(seed)
        return MultiTaskModel(config, encoder=BartModel(_tiny_bart(120)))

    saved = whole_bart_model(0)
    saved.save_pretrained(tmp_path)
    model = whole_bart_model(1)
    model.load_weights(tmp_path)
    assert model.encoder.encoder.embed_tokens.weight is model.encoder.shared.weight  # still one tensor
    expected = saved.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_a_bart_backbone_survives_load_best_model_at_end(tiny_tokenizer_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    encoder_dir = tmp_path / "bart"
    torch.manual_seed(0)
    BartModel(_tiny_bart(len(tokenizer), tokenizer.pad_token_id)).save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    out = tmp_path / "out"
    settings = {"max_steps": 4, "eval_steps": 2, "save_steps": 2, "load_best_model_at_end": True}
    config = make_config(str(encoder_dir), out, {"rte": TASK_CONFIGS["rte"]}, samples=16, eval_samples=8, **settings)
    trainer = run_recipe(write_config(tmp_path / "run.yaml", config))

    record = RunRecord.read(out)
    assert record.finished and record.best_step in (2, 4)
    reloaded = MultiTaskModel.from_pretrained(out)
    trained = trainer.unwrapped_model().state_dict()
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, trained[name]), name


def test_weights_of_another_model_are_refused_by_name(tmp_path):
    heads = {"a": {"type": "classification", "num_labels": 2, "id2label": {0: "x", 1: "y"}}}
    MultiTaskModel(MultiTaskConfig(encoder=_tiny_bart(120).to_dict(), tasks=heads, pooling="cls")).save_pretrained(
        tmp_path
    )
    other = MultiTaskModel(
        MultiTaskConfig(
            encoder=_tiny_bart(120).to_dict(), tasks={"b": {"type": "regression", "num_labels": 1}}, pooling="cls"
        )
    )
    with pytest.raises(
        HfmtlError, match=r"does not hold this model's weights: 4 missing \(e\.g\. 'heads\.b\..*unknown"
    ):
        other.load_weights(tmp_path)
