"""Encoder layer groups, static freezing, layer-wise lr decay and gradual unfreezing (hfmtl.model.freezing).

Freezing is checked by its effect: a few real AdamW steps on the model's own loss, then frozen
parameters must be bit-identical and trainable ones changed.
"""

from __future__ import annotations

import doctest

import peft
import pytest
import torch
import transformers
from torch import nn

import hfmtl.model.freezing
from hfmtl import ConfigError, MultiTaskConfig, MultiTaskModel
from hfmtl.model.backbone import encoder_layer_groups
from hfmtl.model.freezing import GradualUnfreezer, build_param_groups, freeze_encoder_parts

TINY = {
    "hidden_size": 64,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 120,
    "max_position_embeddings": 64,
}
HEAD = {"type": "classification", "num_labels": 2, "id2label": {0: "x", 1: "y"}}


def _encoder_config(family: str, num_layers: int) -> transformers.PreTrainedConfig:
    if family == "bert":
        return transformers.BertConfig(**TINY, num_hidden_layers=num_layers)
    if family == "roberta":
        return transformers.RobertaConfig(**TINY, num_hidden_layers=num_layers, pad_token_id=1)
    if family == "deberta-v2":  # relative attention: rel_embeddings + encoder.LayerNorm outside the layers
        return transformers.DebertaV2Config(
            **TINY,
            num_hidden_layers=num_layers,
            relative_attention=True,
            position_buckets=16,
            norm_rel_ebd="layer_norm",
        )
    if family == "electra":  # embedding_size != hidden_size: an embeddings_project outside the layers
        return transformers.ElectraConfig(**TINY, num_hidden_layers=num_layers, embedding_size=32)
    if family == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=120, dim=64, n_layers=num_layers, n_heads=2, hidden_dim=128, max_position_embeddings=64
        )
    raise AssertionError(family)


def _model(family: str = "bert", num_layers: int = 2) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(MultiTaskConfig(encoder=_encoder_config(family, num_layers), tasks={"a": HEAD}))


def _lora(model: MultiTaskModel) -> MultiTaskModel:
    """Wrap the encoder with LoRA on query/value; the heads stay as they are (trainable)."""
    model.encoder = peft.get_peft_model(model.encoder, peft.LoraConfig(r=4, target_modules=["query", "value"]))
    return model


def _batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(5, 100, (4, 9), generator=generator),
        "attention_mask": torch.ones(4, 9, dtype=torch.long),
        "labels": torch.tensor([0, 1, 1, 0]),
    }


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _train(model: MultiTaskModel, steps: int, optimizer=None, unfreezer=None, snapshots=None) -> None:
    """Real AdamW steps on the model's loss (weight decay on: a skipped parameter must not even decay)."""
    optimizer = optimizer or torch.optim.AdamW(build_param_groups(model, learning_rate=1e-2, weight_decay=0.1), lr=1e-2)
    model.train()
    batch = _batch()
    for step in range(steps):
        model(task="a", **batch).loss.backward()
        if unfreezer is not None:
            unfreezer.drop_frozen_grads(step)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if snapshots is not None:
            snapshots.append(_snapshot(model))


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}


# --- encoder_layer_groups ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "roberta", "deberta-v2", "electra", "distilbert", "bert-lora"])
def test_layer_groups_cover_every_encoder_parameter_once(family):
    num_layers = 3
    model = _model(family.removesuffix("-lora"), num_layers)
    if family.endswith("-lora"):
        model = _lora(model)
    encoder = model.encoder
    groups = encoder_layer_groups(encoder)
    assert len(groups) == num_layers + 1
    assert all(groups), "no group may be empty"
    flat = [id(p) for group in groups for p in group]
    assert len(flat) == len(set(flat)), "a parameter is in two groups"
    assert set(flat) == {id(p) for p in encoder.parameters()}

    name_of = {id(p): name for name, p in encoder.named_parameters()}
    layer_list = "transformer.layer" if family == "distilbert" else "encoder.layer"
    for index, group in enumerate(groups):
        for p in group:
            if index == 0:
                assert f"{layer_list}." not in name_of[id(p)]
            else:
                assert f"{layer_list}.{index - 1}." in name_of[id(p)]
    outside = {name_of[id(p)].removeprefix("base_model.model.") for p in groups[0]}
    if family == "deberta-v2":
        assert {"encoder.rel_embeddings.weight", "encoder.LayerNorm.weight", "encoder.LayerNorm.bias"} <= outside
    if family == "electra":
        assert {"embeddings_project.weight", "embeddings_project.bias"} <= outside
    if family == "bert-lora":
        for index in range(1, num_layers + 1):
            lora = [name_of[id(p)] for p in groups[index] if "lora_" in name_of[id(p)]]
            assert len(lora) == 4, lora  # A and B of query and value
            assert all(p.requires_grad == ("lora_" in name_of[id(p)]) for p in groups[index])


class _NoLayerList(nn.Module):
    """An encoder whose layers sit in an nn.Sequential: nothing to identify them by."""

    def __init__(self):
        super().__init__()
        self.config = transformers.BertConfig(num_hidden_layers=2)
        self.embeddings = nn.Embedding(10, 8)
        self.blocks = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))


def test_encoder_without_a_layer_list_is_a_clear_error():
    message = (
        r"cannot find the transformer layers of encoder type 'bert' \(no nn.ModuleList of num_hidden_layers=2 "
        r"modules\); freezing the embeddings or bottom layers, layer-wise lr decay and gradual unfreezing need them"
    )
    with pytest.raises(ConfigError, match=message):
        encoder_layer_groups(_NoLayerList())
    encoder = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"encoder type 'Sequential' \(no layer count in its config\)"):
        encoder_layer_groups(encoder)


def test_linear_probing_needs_no_layer_list():
    model = _model()
    model.encoder = _NoLayerList()
    assert freeze_encoder_parts(model, encoder=True) == 10 * 8 + 2 * (8 * 8 + 8)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.heads.parameters())
    with pytest.raises(ConfigError, match="cannot find the transformer layers"):
        freeze_encoder_parts(model, bottom_layers=1)


# --- freeze_encoder_parts -----------------------------------------------------------------------------

FREEZE_MODES = {
    "embeddings": ({"embeddings": True}, [0]),
    "bottom_2": ({"bottom_layers": 2}, [1, 2]),
    "embeddings_and_bottom_1": ({"embeddings": True, "bottom_layers": 1}, [0, 1]),
    "linear_probing": ({"encoder": True}, [0, 1, 2, 3]),
}


@pytest.mark.parametrize("mode", sorted(FREEZE_MODES))
def test_freeze_modes_keep_frozen_parameters_bit_identical(mode):
    kwargs, frozen_groups = FREEZE_MODES[mode]
    model = _model(num_layers=3)
    groups = encoder_layer_groups(model.encoder)
    frozen = {id(p) for index in frozen_groups for p in groups[index]}
    count = freeze_encoder_parts(model, **kwargs)
    assert count == sum(p.numel() for index in frozen_groups for p in groups[index])
    assert {id(p) for p in model.parameters() if not p.requires_grad} == frozen

    before = _snapshot(model)
    _train(model, steps=3)
    changed = _changed(before, model)
    for name, p in model.named_parameters():
        assert (name in changed) == (id(p) not in frozen), name
    if mode == "linear_probing":
        assert changed == {name for name, _ in model.named_parameters() if name.startswith("heads.")}


def test_freezing_never_unfreezes_what_peft_froze():
    model = _lora(_model(num_layers=2))
    trainable_before = {name for name, p in model.named_parameters() if p.requires_grad}
    freeze_encoder_parts(model, embeddings=True, bottom_layers=1)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    lora_layer_0 = {name for name in trainable_before if "encoder.layer.0." in name}
    assert lora_layer_0 and all("lora_" in name for name in lora_layer_0)
    assert trainable == trainable_before - lora_layer_0

    before = _snapshot(model)
    _train(model, steps=2)
    assert _changed(before, model) == trainable


def test_freeze_rejects_more_layers_than_the_encoder_has():
    model = _model(num_layers=3)
    with pytest.raises(ConfigError, match="bottom_layers=4 is more than the 3 layers of encoder type 'bert'"):
        freeze_encoder_parts(model, bottom_layers=4)
    with pytest.raises(ConfigError, match="bottom_layers=-1 must be >= 0"):
        freeze_encoder_parts(model, bottom_layers=-1)
    assert all(p.requires_grad for p in model.parameters()), "a rejected call must freeze nothing"
    assert freeze_encoder_parts(model) == 0


# --- build_param_groups -------------------------------------------------------------------------------


def test_layerwise_lr_decay_and_head_learning_rate():
    model = _model(num_layers=2)
    groups = build_param_groups(
        model, learning_rate=1e-3, weight_decay=0.01, layerwise_lr_decay=0.5, head_learning_rate=1e-2
    )
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {
        "layer_2": 1e-3,
        "layer_2/no_decay": 1e-3,
        "layer_1": 5e-4,
        "layer_1/no_decay": 5e-4,
        "embeddings": 2.5e-4,
        "embeddings/no_decay": 2.5e-4,
        "heads": 1e-2,
        "heads/no_decay": 1e-2,
    }
    assert groups[0]["name"] == "layer_2", "the first group runs at learning_rate"
    for group in groups:
        no_decay = group["name"].endswith("/no_decay")
        assert group["weight_decay"] == (0.0 if no_decay else 0.01)
        assert all((p.ndim < 2) == no_decay for p in group["params"])
    flat = [id(p) for g in groups for p in g["params"]]
    assert sorted(flat) == sorted(id(p) for p in model.parameters())
    layer_groups = encoder_layer_groups(model.encoder)
    assert {id(p) for p in layer_groups[1]} == {
        id(p) for g in groups if g["name"].startswith("layer_1") for p in g["params"]
    }


def test_param_groups_leave_out_frozen_parameters_and_empty_groups():
    model = _model(num_layers=2)
    freeze_encoder_parts(model, embeddings=True)
    groups = build_param_groups(model, learning_rate=1e-3, weight_decay=0.0, layerwise_lr_decay=0.9)
    assert [g["name"] for g in groups] == [
        "layer_2",
        "layer_2/no_decay",
        "layer_1",
        "layer_1/no_decay",
        "heads",
        "heads/no_decay",
    ]
    flat = [id(p) for g in groups for p in g["params"]]
    assert sorted(flat) == sorted(id(p) for p in model.parameters() if p.requires_grad)

    # no decay: one encoder lr; head lr defaults to it; a parameter outside encoder and heads is kept
    model.register_parameter("extra", nn.Parameter(torch.zeros(3)))
    groups = build_param_groups(model, learning_rate=1e-3, weight_decay=0.01)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("encoder", 1e-3),
        ("encoder/no_decay", 1e-3),
        ("heads", 1e-3),
        ("heads/no_decay", 1e-3),
        ("other/no_decay", 1e-3),
    ]

    lora = _lora(_model(num_layers=2))
    groups = build_param_groups(lora, learning_rate=1e-3, weight_decay=0.01, layerwise_lr_decay=0.5)
    assert [g["name"] for g in groups] == ["layer_2", "layer_1", "heads", "heads/no_decay"]
    assert all(p.requires_grad for g in groups for p in g["params"])


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5, float("nan")])
def test_layerwise_lr_decay_must_be_in_zero_one(decay):
    with pytest.raises(ConfigError, match=r"layerwise_lr_decay=.* must be in \(0, 1\]"):
        build_param_groups(_model(), learning_rate=1e-3, weight_decay=0.0, layerwise_lr_decay=decay)


def test_scheduler_keeps_the_ratios_between_groups():
    model = _model(num_layers=2)
    groups = build_param_groups(
        model, learning_rate=1e-3, weight_decay=0.01, layerwise_lr_decay=0.5, head_learning_rate=4e-3
    )
    initial = [g["lr"] for g in groups]
    optimizer = torch.optim.AdamW(groups)
    scheduler = transformers.get_scheduler("linear", optimizer, num_warmup_steps=2, num_training_steps=10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
        factor = scheduler.get_last_lr()[0] / 1e-3
        assert 0 < factor <= 1
        assert scheduler.get_last_lr() == pytest.approx([lr * factor for lr in initial], rel=1e-12)
        assert [g["name"] for g in optimizer.param_groups] == [g["name"] for g in groups]


# --- GradualUnfreezer ---------------------------------------------------------------------------------


def test_gradual_unfreezing_from_the_top_down():
    model = _model(num_layers=2)
    unfreezer = GradualUnfreezer(model, every_steps=2)
    assert [unfreezer.frozen_groups(step) for step in range(8)] == [3, 3, 2, 2, 1, 1, 0, 0]
    assert unfreezer.fully_unfrozen_step == 6
    assert unfreezer.describe(0) == "trainable: heads; frozen: layer_2, layer_1, embeddings"
    assert unfreezer.describe(6) == "trainable: heads, layer_2, layer_1, embeddings; frozen: none"

    names = {id(p): name for name, p in model.named_parameters()}
    layer_groups = encoder_layer_groups(model.encoder)
    # the step whose optimizer.step() first updates a group: layer_2 at 2, layer_1 at 4, embeddings at 6
    first_update = {names[id(p)]: 2 * (3 - index) for index, group in enumerate(layer_groups) for p in group}
    first_update.update({name: 0 for name, _ in model.named_parameters() if name.startswith("heads.")})

    initial = _snapshot(model)
    snapshots: list[dict[str, torch.Tensor]] = []
    _train(model, steps=8, unfreezer=unfreezer, snapshots=snapshots)
    for name, step in first_update.items():
        for s, after in enumerate(snapshots):
            assert torch.equal(after[name], initial[name]) == (s < step), (name, s)
    assert all(p.requires_grad for p in model.parameters()), "the unfreezer never toggles requires_grad"


def test_gradual_unfreezing_keeps_static_freezing():
    model = _model(num_layers=2)
    freeze_encoder_parts(model, embeddings=True)
    static = {name for name, p in model.named_parameters() if not p.requires_grad}
    unfreezer = GradualUnfreezer(model, every_steps=1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    before = _snapshot(model)
    _train(model, steps=5, optimizer=optimizer, unfreezer=unfreezer)
    assert {name for name, p in model.named_parameters() if not p.requires_grad} == static
    assert _changed(before, model) == {name for name, _ in model.named_parameters()} - static


def test_unfreezer_rejects_bad_every_steps():
    with pytest.raises(ConfigError, match="every_steps=0 must be an integer >= 1"):
        GradualUnfreezer(_model(), every_steps=0)


def test_docstring_examples_run():
    result = doctest.testmod(hfmtl.model.freezing)
    assert result.attempted > 0 and result.failed == 0
