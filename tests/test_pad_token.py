"""A tokenizer without a pad token pads with its EOS token, saved with the model; without either, one line."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import transformers
from conftest import TASK_CONFIGS, make_config, reset_accelerate_state, run_recipe, write_config

import hfmtl
from hfmtl.config import ModelConfig
from hfmtl.errors import ConfigError
from hfmtl.training.data import load_tokenizer


def _save_decoder(path, config_class, tokenizer_dir) -> str:
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    assert tokenizer.pad_token is None and tokenizer.eos_token == "[SEP]"
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    assert config.pad_token_id is None
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def llama_without_pad_dir(tmp_path_factory, tiny_decoder_tokenizer_dir) -> str:
    """A tiny random Llama whose config and tokenizer name no pad token (as Llama checkpoints ship)."""
    path = tmp_path_factory.mktemp("tiny-llama-no-pad")
    return _save_decoder(path, transformers.LlamaConfig, tiny_decoder_tokenizer_dir)


def test_training_without_a_pad_token_pads_with_eos_and_the_model_keeps_it(llama_without_pad_dir, tmp_path):
    config = make_config(llama_without_pad_dir, tmp_path / "out", {"rte": TASK_CONFIGS["rte"]}, samples=16)
    config["train"].update(max_steps=2, eval_steps=2)
    reset_accelerate_state()
    run_recipe(write_config(tmp_path / "run.yaml", config))
    log = (tmp_path / "out" / "train.log").read_text().splitlines()
    auto = [line for line in log if "model.pooling=auto" in line]
    assert len(auto) == 1 and auto[0].endswith(
        "'last' (the last non-padding token), as llama is a decoder (causal) model"
    )
    said = [line for line in log if "has no pad token" in line]
    assert len(said) == 1 and said[0].endswith(
        f"INFO hfmtl: the tokenizer of {llama_without_pad_dir} has no pad token: padding with its end-of-sequence "
        "token '[SEP]' (id 3), saved with the model"
    )
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["encoder"]["pad_token_id"] == 3 and saved["pooling"] == "last"

    predictor = hfmtl.Predictor.from_pretrained(str(tmp_path / "out"), device="cpu")
    assert predictor.tokenizer.pad_token == "[SEP]" and predictor.model.config.encoder.pad_token_id == 3
    pairs = [("A man plays a guitar.", "A man plays music."), ("Rain.", "It is wet outside today, very wet.")]
    together = predictor.predict("rte", pairs)
    alone = [predictor.predict("rte", [pair])[0] for pair in pairs]
    assert [r["label"] for r in together] == [r["label"] for r in alone]
    for batched, single in zip(together, alone):
        assert batched["score"] == pytest.approx(single["score"], abs=1e-5)


def test_a_pad_token_outside_the_vocabulary_is_one_line(tiny_decoder_tokenizer_dir, tmp_path, capsys):
    # transformers picks the tokenizer class from config.json: Qwen2's adds its own '<|endoftext|>' pad
    # token after the 4,000 pieces this tiny vocabulary has
    encoder = _save_decoder(tmp_path / "qwen2", transformers.Qwen2Config, tiny_decoder_tokenizer_dir)
    config = make_config(encoder, tmp_path / "out", {"rte": TASK_CONFIGS["rte"]}, samples=8)
    reset_accelerate_state()
    with pytest.raises(ConfigError) as err:
        run_recipe(write_config(tmp_path / "run.yaml", config))
    assert str(err.value).startswith(
        "the tokenizer pads with '<|endoftext|>' (id 4000), outside the encoder's vocabulary of 4000 tokens; "
    )
    assert "\n" not in str(err.value)


def test_a_tokenizer_with_neither_pad_nor_eos_is_one_line(tiny_tokenizer_dir, tmp_path):
    from tokenizers import Tokenizer

    wordpiece = Tokenizer.from_file(f"{tiny_tokenizer_dir}/tokenizer.json")
    transformers.PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]").save_pretrained(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path)))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"model.name_or_path={str(tmp_path)!r}: its tokenizer has neither a pad token nor")
    assert "model.tokenizer_name_or_path" in message and "add_special_tokens" in message


def test_only_a_tokenizer_without_a_pad_token_gets_one(tiny_encoder_dir, llama_without_pad_dir, caplog):
    caplog.set_level(logging.INFO, logger="hfmtl")  # caught whether or not an earlier recipe run stopped propagation
    assert load_tokenizer(ModelConfig(name_or_path=tiny_encoder_dir)).pad_token == "[PAD]"
    assert not [r for r in caplog.records if "has no pad token" in r.getMessage()]
    assert load_tokenizer(ModelConfig(name_or_path=llama_without_pad_dir)).pad_token == "[SEP]"
    assert len([r for r in caplog.records if "has no pad token" in r.getMessage()]) == 1
