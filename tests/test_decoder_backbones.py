"""Decoder (causal) backbones: the pooling 'auto' picks, batch-independent predictions, every task type.

Tiny random Qwen2, Llama and GPT-2 (2 layers, hidden 64) with a WordPiece tokenizer that has no [CLS]
in front, so that two texts starting with the same word start with the same token.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers
from conftest import TASK_CONFIGS, make_config, reset_accelerate_state, run_recipe, write_config

import hfmtl
from hfmtl import MultiTaskConfig, MultiTaskModel
from hfmtl.model.pooling import is_causal, resolve_pooling
from hfmtl.training.callbacks import TrainerCallback

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}


def decoder_config(family: str, vocab_size: int) -> transformers.PreTrainedConfig:
    if family == "gpt2":  # absolute position embeddings: left padding must not shift them
        return transformers.GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=2, n_positions=128)
    config_class = {"qwen2": transformers.Qwen2Config, "llama": transformers.LlamaConfig}[family]
    return config_class(vocab_size=vocab_size, num_key_value_heads=2, max_position_embeddings=128, **TINY)


HEADS = {
    "cls": {"type": "classification", "num_labels": 3, "id2label": {0: "a", 1: "b", 2: "c"}},
    "tag": {"type": "token_classification", "num_labels": 4, "id2label": {i: f"T{i}" for i in range(4)}},
}
TEXTS = ["A man plays a guitar.", "Two dogs run through the snow in the park near the river.", "Rain."]


@pytest.fixture(scope="module")
def decoder_tokenizer(tiny_decoder_tokenizer_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_decoder_tokenizer_dir)
    tokenizer.pad_token = "[PAD]"  # a pad token distinct from EOS; test_pad_token.py covers tokenizers without
    return tokenizer


def _model(encoder_config, pooling: str = "auto") -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(MultiTaskConfig(encoder=encoder_config.to_dict(), tasks=HEADS, pooling=pooling)).eval()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (transformers.BertConfig(), "cls"),
        (transformers.RobertaConfig(), "cls"),
        (transformers.DistilBertConfig(), "cls"),
        (transformers.ModernBertConfig(), "cls"),
        (transformers.BertConfig(is_decoder=True), "last"),  # a BERT configured as a causal decoder
        (transformers.Qwen2Config(), "last"),
        (transformers.LlamaConfig(), "last"),
        (transformers.MistralConfig(), "last"),
        (transformers.GPT2Config(), "last"),
        (transformers.T5Config(), "cls"),  # encoder-decoder: the encoder half is bidirectional
        (transformers.BartConfig(), "cls"),
    ],
    ids=lambda value: getattr(value, "model_type", value),
)
def test_auto_pooling_follows_the_attention_of_the_family(config, expected, caplog):
    with caplog.at_level("INFO", logger="hfmtl"):
        assert resolve_pooling("auto", config) == expected
    assert is_causal(config) is (expected == "last")
    assert f"model.pooling=auto: {expected!r}" in caplog.text and config.model_type in caplog.text
    assert resolve_pooling("mean", config) == "mean"  # an explicit choice is kept


def test_the_resolved_pooling_is_saved_and_an_explicit_one_loads_unchanged(decoder_tokenizer, tmp_path):
    qwen = decoder_config("qwen2", len(decoder_tokenizer))
    _model(qwen).save_pretrained(tmp_path / "auto")
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["pooling"] == "last"
    assert transformers.AutoModel.from_pretrained(tmp_path / "auto").config.pooling == "last"
    # a model saved with 'cls' (as every model before 'auto' was) keeps it, decoder or not
    _model(qwen, pooling="cls").save_pretrained(tmp_path / "cls")
    reloaded = transformers.AutoModel.from_pretrained(tmp_path / "cls")
    assert reloaded.config.pooling == "cls" and reloaded.heads["cls"].pooling == "cls"
    with pytest.raises(hfmtl.errors.ConfigError, match="model.pooling='max' is not allowed; choose one of 'cls'"):
        MultiTaskConfig(encoder=qwen.to_dict(), tasks=HEADS, pooling="max")


def _alone_and_in_a_batch(model, tokenizer, side: str) -> tuple[list, list]:
    """Each text's (sequence logits, token logits of its real tokens): alone, then inside a padded batch."""
    tokenizer.padding_side = side
    alone = []
    with torch.no_grad():
        for text in TEXTS:
            inputs = tokenizer([text], return_tensors="pt")
            alone.append((model(task="cls", **inputs).logits[0], model(task="tag", **inputs).logits[0]))
        batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
        sequence, tokens = model(task="cls", **batch).logits, model(task="tag", **batch).logits
    mask = batch["attention_mask"].bool()
    assert not mask.all(), "the batch must hold padding"
    together = [(sequence[i], tokens[i][mask[i]]) for i in range(len(TEXTS))]
    return alone, together


@pytest.mark.parametrize(
    ("family", "side"),
    [("bert", "right"), ("qwen2", "left"), ("qwen2", "right"), ("llama", "left"), ("llama", "right")]
    + [("gpt2", "left"), ("gpt2", "right")],
)
def test_a_prediction_does_not_depend_on_the_batch_it_is_in(family, side, decoder_tokenizer, tiny_tokenizer_dir):
    if family == "bert":
        tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
        config = transformers.BertConfig(vocab_size=len(tokenizer), max_position_embeddings=128, **TINY)
    else:
        tokenizer = decoder_tokenizer
        config = decoder_config(family, len(tokenizer))
    model = _model(config)
    assert model.config.pooling == ("cls" if family == "bert" else "last")
    alone, together = _alone_and_in_a_batch(model, tokenizer, side)
    for (sequence, tokens), (batched_sequence, batched_tokens) in zip(alone, together):
        torch.testing.assert_close(batched_sequence, sequence, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batched_tokens, tokens, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_decoder_inputs_with_the_same_first_token_get_different_logits(family, decoder_tokenizer):
    pair = ["A man is sleeping.", "A woman plays the piano in a large hall."]
    inputs = decoder_tokenizer(pair, padding=True, return_tensors="pt")
    assert inputs["input_ids"][0, 0] == inputs["input_ids"][1, 0]
    config = decoder_config(family, len(decoder_tokenizer))
    with torch.no_grad():
        first = _model(config, pooling="cls")(task="cls", **inputs).logits
        last = _model(config)(task="cls", **inputs).logits
    # the first token of a causal model sees only itself: 'cls' cannot tell the two apart, 'auto' can
    torch.testing.assert_close(first[0], first[1])
    assert (last[0] - last[1]).abs().max() > 1e-3


@pytest.fixture(scope="module")
def decoder_dirs(tmp_path_factory, decoder_tokenizer) -> dict[str, str]:
    """A tiny random Qwen2 whose tokenizer pads on the right and a Llama whose tokenizer pads on the left."""
    dirs = {}
    for family, side in (("qwen2", "right"), ("llama", "left")):
        path = tmp_path_factory.mktemp(f"tiny-{family}")
        config = decoder_config(family, len(decoder_tokenizer))
        config.pad_token_id = decoder_tokenizer.pad_token_id
        torch.manual_seed(0)
        transformers.AutoModel.from_config(config).save_pretrained(path)
        decoder_tokenizer.padding_side = side
        decoder_tokenizer.save_pretrained(path)
        dirs[family] = str(path)
    return dirs


class _Recorder(TrainerCallback):
    def __init__(self):
        self.trained: list[str] = []
        self.results: dict[str, float] = {}

    def on_step_end(self, trainer, step, task_names):
        self.trained += task_names

    def on_evaluate(self, trainer, step, results):
        self.results = dict(results)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_every_task_type_trains_on_a_decoder(family, decoder_dirs, tmp_path):
    reset_accelerate_state()
    config = make_config(decoder_dirs[family], tmp_path / "out", TASK_CONFIGS, samples=16, eval_samples=8)
    config["sampling"] = {"strategy": "round_robin"}
    config["train"].update(max_steps=10, eval_steps=10)
    recorder = _Recorder()
    trainer = run_recipe(write_config(tmp_path / "run.yaml", config), callbacks=[recorder])
    assert sorted(recorder.trained) == sorted(list(TASK_CONFIGS) * 2)
    for task_name in TASK_CONFIGS:
        scores = [v for k, v in recorder.results.items() if k.startswith(f"eval/{task_name}/")]
        assert scores and all(math.isfinite(v) for v in scores), (task_name, recorder.results)
    before = transformers.AutoModel.from_pretrained(decoder_dirs[family]).state_dict()
    after = trainer.model.encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["pooling"] == "last"
    assert "; last pooling (`auto`), max length 64." in (tmp_path / "out" / "README.md").read_text()  # the card


def test_a_run_recorded_with_cls_before_auto_reruns_unchanged_unless_auto_means_last(
    tiny_encoder_dir, decoder_dirs, tmp_path, capsys
):
    for name, encoder in (("bert", tiny_encoder_dir), ("qwen2", decoder_dirs["qwen2"])):
        config = make_config(encoder, tmp_path / name, {"rte": TASK_CONFIGS["rte"]}, samples=8, eval_samples=8)
        config["train"].update(max_steps=2, eval_steps=2, resume_from_checkpoint="latest")
        config["model"]["pooling"] = "cls"  # what every run saved before 'auto' became the default
        reset_accelerate_state()
        run_recipe(write_config(tmp_path / f"{name}.yaml", config))
        del config["model"]["pooling"]
        path = write_config(tmp_path / f"{name}.yaml", config)
        reset_accelerate_state()
        if name == "bert":  # 'auto' is 'cls' for BERT: the same run, nothing to train
            capsys.readouterr()
            run_recipe(path)
            assert "holds a finished run: nothing to train" in capsys.readouterr().out
        else:  # 'auto' is 'last' for Qwen2: another training
            with pytest.raises(hfmtl.errors.ConfigError, match=r"model.pooling \('cls' -> 'auto'\)"):
                run_recipe(path)


def test_features_of_a_bare_decoder_pool_its_last_token_in_any_batch(decoder_tokenizer):
    import contextlib

    import numpy as np

    from hfmtl.analysis.features import extract_features
    from hfmtl.tasks import task_config_from_dict
    from hfmtl.training.data import prepare_task_data

    decoder_tokenizer.padding_side = "left"
    config = {**TASK_CONFIGS["rte"], "max_eval_samples": 6}
    task = hfmtl.build_task("rte", task_config_from_dict("rte", config))
    dataset = prepare_task_data(task, decoder_tokenizer, 64, contextlib.nullcontext, train=False).eval_features
    torch.manual_seed(0)
    encoder = transformers.AutoModel.from_config(decoder_config("gpt2", len(decoder_tokenizer))).eval()
    batched = extract_features(encoder, task, dataset, decoder_tokenizer, batch_size=6)  # pooling: auto -> last
    alone = extract_features(encoder, task, dataset, decoder_tokenizer, batch_size=1, pooling="last")
    np.testing.assert_allclose(batched.features, alone.features, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        hidden = encoder(input_ids=torch.tensor([dataset[0]["input_ids"]])).last_hidden_state
    np.testing.assert_allclose(batched.features[0], hidden[0, -1].numpy(), rtol=1e-5, atol=1e-5)
