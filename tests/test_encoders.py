"""The model works on the encoder families users bring (tiny random configs of each), with both poolings."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import assert_reloaded_logits_equal

import hfmtl
from hfmtl import MultiTaskConfig, MultiTaskModel

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 120,
    "max_position_embeddings": 64,
}
ENCODERS = {
    "bert": transformers.BertConfig(**TINY),
    "roberta": transformers.RobertaConfig(**TINY, pad_token_id=1),
    "deberta-v2": transformers.DebertaV2Config(**TINY),
    "electra": transformers.ElectraConfig(**TINY, embedding_size=32),
    "distilbert": transformers.DistilBertConfig(
        vocab_size=120, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64
    ),
}
HEADS = {
    "cls": {"type": "classification", "num_labels": 3, "id2label": {0: "a", 1: "b", 2: "c"}},
    "reg": {"type": "regression", "num_labels": 1},
    "tag": {"type": "token_classification", "num_labels": 4, "id2label": {i: f"T{i}" for i in range(4)}},
    "mc": {"type": "multiple_choice", "num_labels": 1},
    "qa": {"type": "question_answering", "num_labels": 2},
}


def _batch(choices: int | None = None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    shape = (2, choices, 7) if choices else (2, 7)
    ids = torch.randint(5, 100, shape)
    mask = torch.ones(shape, dtype=torch.long)
    mask[..., -2:] = 0  # padding at the end of every row
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(shape, dtype=torch.long)}


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("family", sorted(ENCODERS))
def test_every_head_on_every_encoder_family_saves_and_reloads(family, pooling, tmp_path):
    config = MultiTaskConfig(encoder=ENCODERS[family].to_dict(), tasks=HEADS, pooling=pooling)
    torch.manual_seed(0)
    model = MultiTaskModel(config).eval()
    labels = {
        "cls": torch.tensor([0, 2]),
        "reg": torch.tensor([0.5, 1.5]),
        "tag": torch.zeros(2, 7, dtype=torch.long),
        "mc": torch.tensor([1, 0]),
        "qa": torch.tensor([[1, 2], [0, 0]]),
    }
    shapes = {"cls": (2, 3), "reg": (2, 1), "tag": (2, 7, 4), "mc": (2, 3), "qa": (2, 7, 2)}
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is hfmtl.MultiTaskModel and reloaded.config.encoder.model_type == config.encoder.model_type
    saved_weights, reloaded_weights = model.state_dict(), reloaded.state_dict()
    assert saved_weights.keys() == reloaded_weights.keys()
    assert [k for k in saved_weights if not torch.equal(saved_weights[k], reloaded_weights[k])] == []
    for task in HEADS:
        batch = _batch(choices=3 if task == "mc" else None)
        out = model(task=task, labels=labels[task], **batch)
        assert tuple(out.logits.shape) == shapes[task]
        assert torch.isfinite(out.loss)
        assert_reloaded_logits_equal(reloaded(task=task, **batch).logits, out.logits)


def test_mean_pooling_ignores_padding():
    from hfmtl.tasks.heads import pool

    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(pool(hidden, mask, "mean"), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0]]))


def test_unknown_task_name_is_a_clear_error():
    model = MultiTaskModel(MultiTaskConfig(encoder=ENCODERS["bert"].to_dict(), tasks={"cls": HEADS["cls"]}))
    with pytest.raises(KeyError, match="unknown task 'nope'; this model has heads for \\['cls'\\]"):
        model(task="nope", **_batch())
