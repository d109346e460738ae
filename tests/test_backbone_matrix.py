"""The backbone matrix: every family of tiny random model a user may bring -- bidirectional encoders,
decoder LLMs, encoder-decoder models used as their encoder -- trains a step, predicts the same alone as in
a padded batch, reloads through `AutoModel` with the same logits, and exports each head to its standard
transformers class or refuses in one line that says what differs. README.md's table of families is this
file's `FAMILIES` and `EXPORTS`.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import assert_reloaded_logits_equal
from transformers import AutoModel

from hfmtl import MultiTaskConfig, MultiTaskModel
from hfmtl.errors import HfmtlError
from hfmtl.publish.export import export_task

_T = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
_V = {"vocab_size": 120, "max_position_embeddings": 64}
_DECODER = {**_T, **_V, "num_key_value_heads": 1, "pad_token_id": 0}
FAMILIES: dict[str, transformers.PreTrainedConfig] = {
    "bert": transformers.BertConfig(**_T, **_V),
    "roberta": transformers.RobertaConfig(**_T, **_V, pad_token_id=1),
    "xlm-roberta": transformers.XLMRobertaConfig(**_T, **_V, pad_token_id=1),
    "deberta-v2": transformers.DebertaV2Config(**_T, **_V),
    "electra": transformers.ElectraConfig(**_T, **_V, embedding_size=32),
    "distilbert": transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **_V),
    "albert": transformers.AlbertConfig(**_T, **_V, embedding_size=16),
    "mpnet": transformers.MPNetConfig(**_T, **_V, pad_token_id=1),
    "modernbert": transformers.ModernBertConfig(
        **_T, **_V, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
        global_attn_every_n_layers=1,
    ),
    "qwen2": transformers.Qwen2Config(**_DECODER),
    "llama": transformers.LlamaConfig(**_DECODER),
    "t5": transformers.T5Config(vocab_size=120, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2),
    "bart": transformers.BartConfig(
        vocab_size=120, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
    ),
}  # fmt: skip
DECODERS = {"qwen2", "llama"}
HEADS = {
    "cls": {"type": "classification", "num_labels": 3, "id2label": {0: "a", 1: "b", 2: "c"}},
    "tag": {"type": "token_classification", "num_labels": 4, "id2label": {i: f"T{i}" for i in range(4)}},
}
_OTHER_BASE = "base model is laid out differently from hfmtl's encoder"
# family -> (sequence classification, token classification): None = exported, else the refusal's words
EXPORTS: dict[str, tuple[str | None, str | None]] = {
    "bert": (None, None),
    "roberta": (None, None),
    "xlm-roberta": (None, None),
    "deberta-v2": (None, None),
    "electra": ("applies a fixed GELU where hfmtl's head applies tanh", None),
    "distilbert": ("applies a fixed ReLU after pre_classifier", None),
    "albert": (None, None),
    "mpnet": (None, None),
    "modernbert": (
        "ModernBertForSequenceClassification's head is ['classifier', 'head.dense', 'head.norm']",
        "head has the layers ['classifier', 'head.dense', 'head.norm']",
    ),
    "qwen2": ("Qwen2ForSequenceClassification's head is ['score'], where hfmtl's is dense -> tanh -> linear", None),
    "llama": ("LlamaForSequenceClassification's head is ['score'], where hfmtl's is dense -> tanh -> linear", None),
    "t5": (_OTHER_BASE, _OTHER_BASE),
    "bart": (_OTHER_BASE, "Unrecognized configuration class"),
}


def _model(family: str) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(MultiTaskConfig(encoder=FAMILIES[family].to_dict(), tasks=HEADS))


def _padded(side: str) -> dict[str, torch.Tensor]:
    """Two rows of 7 token ids; the second row's last (right) or first (left) 3 positions are padding."""
    ids = torch.randint(5, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if side == "right":
        mask[1, -3:] = 0
    else:
        mask[1, :3] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def test_the_matrix_covers_every_family():
    assert FAMILIES.keys() == EXPORTS.keys()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_family_trains_a_step(family):
    model = _model(family).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = _padded("right")
    before = {name: p.detach().clone() for name, p in model.encoder.named_parameters()}
    loss = model(task="cls", **batch, labels=torch.tensor([0, 2])).loss
    loss = loss + model(task="tag", **batch, labels=torch.zeros(2, 7, dtype=torch.long)).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [name for name, p in model.encoder.named_parameters() if not torch.equal(p, before[name])]
    assert changed, "no encoder weight changed"


@pytest.mark.parametrize(
    ("family", "side"),
    [(family, "right") for family in sorted(FAMILIES)] + [(family, "left") for family in sorted(DECODERS)],
)
def test_a_prediction_does_not_depend_on_its_batch(family, side):
    model = _model(family).eval()
    batch = _padded(side)
    real = batch["attention_mask"][1].bool()
    alone = {key: value[1:, real] for key, value in batch.items()}
    with torch.no_grad():
        for task in HEADS:
            in_batch = model(task=task, **batch).logits[1:]
            by_itself = model(task=task, **alone).logits
            if task == "tag":
                in_batch = in_batch[:, real]
            torch.testing.assert_close(in_batch, by_itself, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_family_reloads_through_automodel(family, tmp_path):
    model = _model(family).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is MultiTaskModel and type(reloaded.encoder) is type(model.encoder)
    batch = _padded("right")
    with torch.no_grad():
        for task in HEADS:
            assert_reloaded_logits_equal(reloaded(task=task, **batch).logits, model(task=task, **batch).logits)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("task", sorted(HEADS))
def test_a_head_exports_or_is_refused_saying_what_differs(family, task, tmp_path):
    refusal = EXPORTS[family][0 if task == "cls" else 1]
    model = _model(family)
    if refusal is None:
        export_task(model, task, tmp_path / "export")  # verified against the model's logits inside
        assert (tmp_path / "export" / "config.json").is_file()
    else:
        with pytest.raises(HfmtlError, match=r"^cannot export task") as error:
            export_task(model, task, tmp_path / "export")
        assert refusal in str(error.value) and "\n" not in str(error.value)
        assert not (tmp_path / "export").exists()
