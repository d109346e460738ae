"""Encoder-decoder models (T5, BART) as backbones: only their encoder stack is loaded, trained, saved and
reloaded (hfmtl/model/encoder_stack.py); model.encoder_only that cannot apply is one line."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import TASK_CONFIGS, encode, make_config, run_recipe, write_config
from transformers import AutoModel, AutoTokenizer

from hfmtl import MultiTaskModel, cli
from hfmtl.run_record import RunRecord

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _configs(vocab_size: int, pad_token_id: int) -> dict[str, transformers.PreTrainedConfig]:
    return {
        "t5": transformers.T5Config(
            vocab_size=vocab_size, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
            pad_token_id=pad_token_id, decoder_start_token_id=pad_token_id,
        ),
        "bart": transformers.BartConfig(
            vocab_size=vocab_size, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=80,
            pad_token_id=pad_token_id,
        ),
    }  # fmt: skip


@pytest.fixture(scope="module", params=["t5", "bart"])
def encoder_decoder_dir(request, tiny_tokenizer_dir, tmp_path_factory) -> str:
    """A tiny random T5 / BART (the whole encoder-decoder model) saved with the tiny tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = _configs(len(tokenizer), tokenizer.pad_token_id)[request.param]
    path = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_only_the_pretrained_encoder_stack_is_loaded(encoder_decoder_dir):
    whole = AutoModel.from_pretrained(encoder_decoder_dir)
    model = MultiTaskModel.from_encoder(encoder_decoder_dir, {"r": {"type": "regression", "num_labels": 1}})
    assert model.config.encoder_only is True
    assert type(model.encoder) is type(whole.get_encoder())
    expected = whole.get_encoder().state_dict()
    assert model.encoder.state_dict().keys() == expected.keys()
    for name, value in model.encoder.state_dict().items():
        assert torch.equal(value, expected[name]), name  # the pretrained weights, not a random init
    assert not any("decoder" in name for name in model.state_dict())


def test_an_encoder_decoder_backbone_trains_saves_reloads_and_predicts_batch_invariantly(encoder_decoder_dir, tmp_path):
    out = tmp_path / "out"
    tasks = {"rte": TASK_CONFIGS["rte"], "ner": TASK_CONFIGS["ner"]}
    settings = {"max_steps": 4, "eval_steps": 2, "load_best_model_at_end": True}
    config = make_config(encoder_decoder_dir, out, tasks, samples=16, eval_samples=8, **settings)
    trainer = run_recipe(write_config(tmp_path / "run.yaml", config))
    assert RunRecord.read(out).finished

    reloaded = AutoModel.from_pretrained(out).eval()  # through the Auto class, as any HF model
    assert type(reloaded).__name__ == "MultiTaskModel" and reloaded.config.encoder_only is True
    trained = trainer.unwrapped_model().state_dict()
    assert reloaded.state_dict().keys() == trained.keys()
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, trained[name]), name

    texts = ["A man is playing a guitar.", "Two dogs run across a wide green field in the sun."]
    batch = encode(encoder_decoder_dir, *texts)  # right-padded: the short text has padding
    alone = encode(encoder_decoder_dir, texts[0])
    with torch.no_grad():
        in_batch = reloaded(task="rte", **batch).logits[:1]
        by_itself = reloaded(task="rte", **alone).logits
    torch.testing.assert_close(in_batch, by_itself, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("family", "value", "message"),
    [
        ("bert", "true", "model.encoder_only=true: bert is not an encoder-decoder model"),
        ("t5", "false", "model.encoder_only=false: t5 is an encoder-decoder model"),
    ],
)
def test_an_encoder_only_that_cannot_apply_is_one_line(
    family, value, message, tiny_encoder_dir, tiny_tokenizer_dir, tmp_path, capsys
):
    encoder = tiny_encoder_dir
    if family == "t5":
        tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
        encoder = str(tmp_path / "t5")
        AutoModel.from_config(_configs(len(tokenizer), tokenizer.pad_token_id)["t5"]).save_pretrained(encoder)
        tokenizer.save_pretrained(encoder)
    cfg = write_config(tmp_path / "run.yaml", make_config(encoder, tmp_path / "out", {"rte": TASK_CONFIGS["rte"]}))
    assert cli.main(["train", str(cfg), f"model.encoder_only={value}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"error: {message}"), err
