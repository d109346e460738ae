"""configs/llm_lora.yaml -- a decoder LLM with one LoRA adapter per task -- run as shipped, on a tiny random
Qwen2 in place of the Hub model: it trains three tasks, LoRA lands on the attention projections PEFT
knows for the architecture, gradient checkpointing is on, and the saved adapters reload to the same
predictions."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import REPO_ROOT, encode, run_recipe
from transformers import AutoTokenizer

from hfmtl import MultiTaskModel
from hfmtl.run_record import RunRecord

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory, tiny_decoder_tokenizer_dir) -> str:
    tokenizer = AutoTokenizer.from_pretrained(tiny_decoder_tokenizer_dir)
    tokenizer.pad_token = tokenizer.eos_token  # as Qwen's own tokenizers ship (a missing one: test_pad_token.py)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, max_position_embeddings=160,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-qwen2")
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_the_llm_lora_config_trains_per_task_adapters_on_a_decoder(tiny_qwen2_dir, tmp_path):
    out = tmp_path / "out"
    small = [
        f"tasks.{task}.{key}={n}"
        for task in ("rte", "stsb", "ner")
        for key, n in (("max_train_samples", 16), ("max_eval_samples", 8))
    ]
    trainer = run_recipe(
        REPO_ROOT / "configs" / "llm_lora.yaml",
        f"model.name_or_path={tiny_qwen2_dir}",
        f"train.output_dir={out}",
        *("train.max_steps=6", "train.eval_steps=6", "train.save_steps=6", "train.logging_steps=3"),
        "train.per_device_train_batch_size=4",
        *small,
    )
    assert RunRecord.read(out).finished
    model = trainer.unwrapped_model()
    assert model.config.pooling == "last" and model.config.peft["mode"] == "per_task"
    assert model.encoder.get_base_model().is_gradient_checkpointing
    for task in ("rte", "stsb", "ner"):  # PEFT's own target modules for qwen2: the q and v projections
        assert sorted(model.encoder.peft_config[task].target_modules) == ["q_proj", "v_proj"]

    reloaded = MultiTaskModel.from_pretrained(out).eval()
    model.eval()
    batch = encode(tiny_qwen2_dir, "A man is playing a guitar.", "Nobody plays.")
    with torch.no_grad():
        for task in ("rte", "stsb", "ner"):
            torch.testing.assert_close(reloaded(task=task, **batch).logits, model(task=task, **batch).logits)
