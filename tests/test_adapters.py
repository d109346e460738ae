"""PEFT adapters on the shared encoder (hfmtl/model/adapters.py): what trains, what is saved, that per-task
adapters stay apart, mixed-task batches, merging, the other PEFT methods, the errors, and the recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
import transformers
from conftest import MINILM, TASK_CONFIGS, assert_reloaded_logits_equal, make_config, run_recipe, write_config
from transformers import BertModel

import hfmtl
from hfmtl import ConfigError, MultiTaskModel
from hfmtl.model.adapters import (
    activate_adapter,
    add_adapters,
    count_parameters,
    is_peft_model,
    merged_encoder,
    update_adalora_budget,
)

LORA = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}
# one task of each type forward_mixed accepts: sequence classification, regression, token classification
SPECS = {
    "cls": {
        "type": "classification",
        "num_labels": 3,
        "id2label": {0: "a", 1: "b", 2: "c"},
        "problem_type": "single_label_classification",
    },
    "reg": {"type": "regression", "num_labels": 1, "problem_type": "regression"},
    "tok": {"type": "token_classification", "num_labels": 5, "id2label": {i: f"T{i}" for i in range(5)}},
}


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def build(encoder_dir: str, peft_config: dict | None, mode: str = "shared", tasks: dict = SPECS, seed: int = 0):
    torch.manual_seed(seed)
    model = MultiTaskModel.from_encoder(encoder_dir, tasks)
    if peft_config is not None:
        add_adapters(model, peft_config, mode=mode, base_model=encoder_dir)
    return model


def perturb(model: MultiTaskModel, marker: str = "lora_B", seed: int = 1) -> int:
    """Random non-zero values in the adapter parameters whose name contains `marker` (LoRA B starts at
    zero, so an untrained LoRA model equals its base encoder and every comparison would be vacuous)."""
    generator = torch.Generator().manual_seed(seed)
    changed = 0
    with torch.no_grad():
        for name, param in model.encoder.named_parameters():
            if marker in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
                changed += 1
    assert changed > 0, f"no parameter named *{marker}*"
    return changed


def make_batch(rows: int = 4, length: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """Sentence pairs of random tokens; rows 1 and 3 (where there are) are padded (ids 0, mask 0)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(10, 1000, (rows, length), generator=generator)  # inside the tiny vocabulary
    input_ids[:, 0] = 2  # [CLS] of the tests' tokenizer (conftest)
    attention_mask = torch.ones(rows, length, dtype=torch.long)
    token_type_ids = torch.zeros(rows, length, dtype=torch.long)
    token_type_ids[:, length // 2 :] = 1
    for row, real in ((1, 6), (3, 4))[: rows // 2]:
        attention_mask[row, real:] = 0
        input_ids[row, real:] = 0
        token_type_ids[row, real:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def labels_for(task_name: str, rows: int = 4, length: int = 10) -> torch.Tensor:
    if task_name == "reg":
        return torch.tensor([0.5, 2.0, 4.5, 1.0])[:rows]
    if task_name == "tok":
        return torch.arange(rows * length).view(rows, length) % 5
    return torch.arange(rows) % 3


def adapter_state(model: MultiTaskModel, adapter_name: str) -> dict[str, torch.Tensor]:
    state = {n: p.detach().clone() for n, p in model.encoder.named_parameters() if f".{adapter_name}." in n}
    assert state, adapter_name
    return state


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --- 1. what trains ---------------------------------------------------------------------------------


def test_lora_on_minilm_trains_under_two_percent_with_the_encoder_frozen():
    spec = {
        "type": "classification",
        "num_labels": 2,
        "id2label": {0: "entailment", 1: "not_entailment"},
        "problem_type": "single_label_classification",
    }
    model = MultiTaskModel.from_encoder(str(MINILM), {"rte": spec})
    base_total = sum(p.numel() for p in model.encoder.parameters())
    add_adapters(
        model,
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["query", "value"]},
        mode="shared",
        base_model=str(MINILM),
    )
    trainable, total = count_parameters(model)

    lora = 6 * 2 * (8 * 384 + 384 * 8)  # 6 layers x (query, value) x (A: r x 384, B: 384 x r)
    head = 384 * 384 + 384 + 384 * 2 + 2  # dense + out_proj of the pooled head
    assert lora == 73_728 and head == 148_610
    assert trainable == lora + head
    assert total == base_total + lora + head
    assert trainable / total == pytest.approx(0.00976, abs=1e-5)
    assert trainable / total < 0.02

    for name, param in model.named_parameters():
        is_adapter = ".lora_A.default." in name or ".lora_B.default." in name
        assert param.requires_grad == (is_adapter or name.startswith("heads.")), name
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert frozen == base_total  # every weight of the pretrained encoder, and nothing else


# --- 2. save -> load ---------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", ["MultiTaskModel", "AutoModel"])
@pytest.mark.parametrize("mode", ["shared", "per_task"])
def test_save_then_load_gives_identical_logits(tiny_encoder_dir, tmp_path, mode, loader):
    model = build(tiny_encoder_dir, LORA, mode)
    perturb(model)
    model.eval()
    batch = make_batch()
    expected = {task: model(task=task, **batch).logits for task in SPECS}
    hidden = model(task="cls", **batch).hidden_states
    model.save_pretrained(tmp_path)

    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "heads.safetensors", "adapters"}
    assert not list(tmp_path.rglob("model.safetensors"))
    names = ["default"] if mode == "shared" else list(SPECS)
    for name in names:
        folder = tmp_path / "adapters" if name == "default" else tmp_path / "adapters" / name
        assert (folder / "adapter_model.safetensors").is_file(), name
    saved = json.loads((tmp_path / "config.json").read_text())["peft"]
    assert saved == {"mode": mode, "base_model": tiny_encoder_dir, "adapters": names}
    # the saved tensors are the adapters and the heads, and nothing of the base encoder
    saved_numel = sum(
        tensor.numel()
        for file in tmp_path.rglob("*.safetensors")
        for tensor in safetensors.torch.load_file(file).values()
    )
    trainable = [p for n, p in model.named_parameters() if "lora_" in n or n.startswith("heads.")]
    assert saved_numel == sum(p.numel() for p in trainable)

    if loader == "AutoModel":
        reloaded = transformers.AutoModel.from_pretrained(tmp_path)
    else:
        reloaded = MultiTaskModel.from_pretrained(tmp_path)
    assert isinstance(reloaded, hfmtl.MultiTaskModel) and is_peft_model(reloaded)
    assert not reloaded.training
    assert reloaded.config.peft == saved
    for task in SPECS:
        logits = reloaded(task=task, **batch).logits
        assert_reloaded_logits_equal(logits, expected[task])
    # the perturbed adapters are what was saved: the bare encoder encodes otherwise
    assert_reloaded_logits_equal(reloaded(task="cls", **batch).hidden_states, hidden)
    bare = build(tiny_encoder_dir, None).eval()
    assert (bare(task="cls", **batch).hidden_states - hidden).abs().max() > 0.1


def test_load_weights_into_a_model_with_the_same_adapters(tiny_encoder_dir, tmp_path):
    """What load_best_model_at_end does: weights saved by save_pretrained into a live PEFT model."""
    model = build(tiny_encoder_dir, LORA, "per_task")
    perturb(model)
    model.eval()
    batch = make_batch()
    expected = {task: model(task=task, **batch).logits for task in SPECS}
    model.save_pretrained(tmp_path)

    other = build(tiny_encoder_dir, LORA, "per_task", seed=5).eval()
    assert not torch.equal(other(task="cls", **batch).logits, expected["cls"])
    other.load_weights(tmp_path)
    for task in SPECS:
        assert torch.equal(other(task=task, **batch).logits, expected[task]), task


# --- 3. per-task adapters do not leak ------------------------------------------------------------------


def test_training_one_task_leaves_the_other_adapter_untouched(tiny_encoder_dir):
    # (not "a" / "b": PEFT warns that an adapter name inside its "lora_" prefix may break loading)
    tasks = {"nli": SPECS["cls"], "sts": SPECS["reg"]}
    model = build(tiny_encoder_dir, LORA, "per_task", tasks=tasks)
    perturb(model)
    # built as the trainer builds it: over every trainable parameter, both adapters and both heads
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == count_parameters(model)[0]
    batch, labels = make_batch(), labels_for("cls")
    model.eval()
    logits_b = model(task="sts", **batch).logits
    loss_before = model(task="nli", **batch, labels=labels).loss.item()
    before_a, before_b = adapter_state(model, "nli"), adapter_state(model, "sts")
    head_b = {k: v.clone() for k, v in model.heads["sts"].state_dict().items()}

    model.train()
    for _ in range(4):
        loss = model(task="nli", **batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        assert torch.isfinite(loss)
    model.eval()
    assert model(task="nli", **batch, labels=labels).loss.item() < loss_before - 0.05

    after_a, after_b = adapter_state(model, "nli"), adapter_state(model, "sts")
    assert len(before_b) == 2 * 2 * 2  # 2 layers x (query, value) x (A, B)
    assert all(torch.equal(before_b[n], after_b[n]) for n in before_b)
    assert all(torch.equal(v, model.heads["sts"].state_dict()[k]) for k, v in head_b.items())
    changed_a = [n for n in before_a if not torch.equal(before_a[n], after_a[n])]
    assert len(changed_a) == len(before_a)  # every A and B matrix of adapter "nli" moved
    assert torch.equal(model(task="sts", **batch).logits, logits_b)


def test_every_adapter_stays_trainable_across_task_switches(tiny_encoder_dir):
    model = build(tiny_encoder_dir, LORA, "per_task")
    batch = make_batch(rows=1)

    def frozen_adapters() -> set[str]:
        return {n.split(".")[-2] for n, p in model.encoder.named_parameters() if "lora_" in n and not p.requires_grad}

    assert frozen_adapters() == set()
    # what the guard is for: PEFT's own switch freezes every adapter but the active one
    model.encoder.set_adapter("reg")
    assert frozen_adapters() == {"cls", "tok"}
    activate_adapter(model.train(), "cls")
    assert frozen_adapters() == set()

    model.train()
    for task in ("reg", "tok", "tok", "cls"):
        model(task=task, **batch)
        assert model.encoder.active_adapter == task
        assert frozen_adapters() == set(), task
    # an evaluation between training steps switches in eval mode; the next training step (even on the
    # task evaluated last, i.e. no switch) must find every adapter trainable again
    model.eval()
    for task in SPECS:
        model(task=task, **batch)
    assert frozen_adapters() == {"cls", "reg"}  # eval mode leaves PEFT's choice alone
    model.train()
    model(task="tok", **batch)
    assert frozen_adapters() == set()
    base = [p for n, p in model.encoder.named_parameters() if "lora_" not in n]
    assert not any(p.requires_grad for p in base)


# --- 4. mixed-task batches ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["per_task", "shared", None])
def test_forward_mixed_equals_each_task_run_alone(tiny_encoder_dir, mode):
    model = build(tiny_encoder_dir, None if mode is None else LORA, mode or "shared")
    if mode is not None:
        perturb(model)
    model.eval()
    batch = make_batch(rows=6, seed=3)  # rows 1 and 3 padded
    tasks = ["cls", "tok", "reg", "tok", "cls", "reg"]

    with torch.no_grad():
        mixed = model.forward_mixed(tasks, **batch)
        assert len(mixed) == 6
        for task in SPECS:
            rows = [i for i, t in enumerate(tasks) if t == task]
            alone = model(task=task, **{k: v[rows] for k, v in batch.items()}).logits
            for j, row in enumerate(rows):
                assert mixed[row].shape == alone[j].shape, (task, row)
                torch.testing.assert_close(mixed[row], alone[j], atol=1e-5, rtol=0)
        assert [tuple(m.shape) for m in mixed] == [(3,), (10, 5), (1,), (10, 5), (3,), (1,)]
        if mode == "per_task":
            # the routing matters: another task's adapter gives another encoding of the same row
            ours = model(task="tok", **{k: v[[1]] for k, v in batch.items()}).hidden_states
            theirs = model(task="cls", **{k: v[[1]] for k, v in batch.items()}).hidden_states
            assert (ours - theirs).abs().max() > 1e-2


def test_forward_mixed_refuses_multiple_choice_and_per_task_training(tiny_encoder_dir):
    batch = make_batch(rows=2)
    with_mc = build(
        tiny_encoder_dir, None, tasks={"cls": SPECS["cls"], "mc": {"type": "multiple_choice", "num_labels": 1}}
    )
    with pytest.raises(ValueError, match="task 'mc' is multiple choice"):
        with_mc.eval().forward_mixed(["cls", "mc"], **batch)

    model = build(tiny_encoder_dir, LORA, "per_task")
    with pytest.raises(ValueError, match="eval mode only"):
        model.train().forward_mixed(["cls", "reg"], **batch)
    with pytest.raises(ValueError, match="2 task names for a batch of 3 rows"):
        model.eval().forward_mixed(["cls", "reg"], **make_batch(rows=3))
    shared = build(tiny_encoder_dir, LORA, "shared")
    assert len(shared.train().forward_mixed(["cls", "reg"], **batch)) == 2  # one adapter: any mode


# --- 5. merging ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["shared", "per_task"])
def test_merged_encoder_equals_the_adapter_model(tiny_encoder_dir, mode):
    model = build(tiny_encoder_dir, LORA, mode)
    perturb(model)
    model.eval()
    batch = make_batch()
    with torch.no_grad():
        expected = model(task="reg", **batch).hidden_states
        other = model(task="cls", **batch).hidden_states
        merged = merged_encoder(model, "reg" if mode == "per_task" else None)
        assert type(merged) is BertModel
        assert not any("lora_" in name for name in merged.state_dict())
        got = merged(**batch).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if mode == "per_task":
        assert (got - other).abs().max() > 1e-2  # it is task reg's adapter that was folded in


def test_merging_per_task_adapters_needs_a_known_task(tiny_encoder_dir):
    model = build(tiny_encoder_dir, LORA, "per_task")
    with pytest.raises(ConfigError, match="name the task"):
        merged_encoder(model)
    with pytest.raises(ConfigError, match="no adapter for task 'nope'"):
        merged_encoder(model, "nope")
    assert is_peft_model(model)  # nothing consumed by a refused merge


# --- 6. other PEFT methods --------------------------------------------------------------------------------

OTHER_METHODS = {
    "IA3": {
        "peft_type": "IA3",
        "target_modules": ["key", "value", "output.dense"],
        "feedforward_modules": ["output.dense"],
    },
    # total_step comes from add_adapters(total_steps=...), as the recipe passes train.max_steps
    "ADALORA": {"peft_type": "ADALORA", "init_r": 6, "target_r": 2, "target_modules": ["query", "value"]},
    "PROMPT_TUNING": {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4},
    "PREFIX_TUNING": {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4},
}
STEPS = 4


@pytest.mark.parametrize("method", list(OTHER_METHODS))
def test_other_peft_methods_build_train_and_reload(tiny_encoder_dir, tmp_path, method):
    torch.manual_seed(0)
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, SPECS)
    bare = MultiTaskModel.from_encoder(tiny_encoder_dir, SPECS).eval()
    add_adapters(model, OTHER_METHODS[method], mode="shared", base_model=tiny_encoder_dir, total_steps=STEPS)
    config = model.encoder.peft_config["default"]
    if method == "ADALORA":
        assert config.total_step == STEPS
    trainable, total = count_parameters(model)
    # every weight of the base encoder is frozen (and AdaLoRA's fixed rank counts, checked below);
    # what trains is the method's own weights and the heads
    fixed = sum(p.numel() for n, p in model.encoder.named_parameters() if ".ranknum." in n)
    assert trainable > 0 and total - trainable == sum(p.numel() for p in bare.encoder.parameters()) + fixed

    batch, labels = make_batch(), labels_for("cls")
    adapter_params = {n: p for n, p in model.encoder.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in adapter_params.items()}
    loss_before = model.eval()(task="cls", **batch, labels=labels).loss.item()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, STEPS + 1):  # the trainer's order: step, then AdaLoRA's budget, then zero_grad
        loss = model(task="cls", **batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        update_adalora_budget(model, step)
        optimizer.zero_grad()
        assert torch.isfinite(loss), step
    model.eval()
    assert model(task="cls", **batch, labels=labels).loss.item() < loss_before
    unchanged = [n for n, p in adapter_params.items() if torch.equal(p, before[n])]
    if method == "ADALORA":  # a module whose every rank the budget pruned keeps its lora_E at zero
        pruned = [k for k, mask in config.rank_pattern.items() if not any(mask)]
        unchanged = [n for n in unchanged if not any(n.endswith(k) for k in pruned)]
    assert unchanged == []  # every adapter weight moved

    expected = {task: model(task=task, **batch).logits for task in SPECS}
    assert expected["tok"].shape == (4, 10, 5)  # prompt tuning's 4 virtual tokens are stripped
    if method == "ADALORA":
        # the final budget: target_r ranks per adapted module, 2 layers x (query, value)
        kept = sum(sum(mask) for mask in config.rank_pattern.values())
        assert len(config.rank_pattern) == 4 and kept == 2 * 4
        # ranknum (the scale's divisor) is a fixed parameter PEFT does not save: it must not train
        ranknums = [p for n, p in model.encoder.named_parameters() if ".ranknum." in n]
        assert len(ranknums) == 4 and all(not p.requires_grad and p.item() == 6.0 for p in ranknums)
    if method == "PREFIX_TUNING":
        with torch.no_grad():
            hidden = model(task="tok", **batch).hidden_states
            bare_hidden = bare(task="tok", **batch).hidden_states
            assert hidden.shape == bare_hidden.shape
            assert (hidden - bare_hidden).abs().max() > 1e-1  # the prefix reaches the attention
            perturb(model, marker="prompt_encoder", seed=2)
            assert (model(task="tok", **batch).hidden_states - hidden).abs().max() > 1e-1
            expected = {task: model(task=task, **batch).logits for task in SPECS}

    model.save_pretrained(tmp_path)
    assert not list(tmp_path.rglob("model.safetensors"))
    assert (tmp_path / "adapters" / "adapter_model.safetensors").is_file()
    reloaded = MultiTaskModel.from_pretrained(tmp_path)
    for task in SPECS:
        assert_reloaded_logits_equal(reloaded(task=task, **batch).logits, expected[task])


# --- 7. errors -------------------------------------------------------------------------------------------

ERROR_CASES = {  # case -> (peft config, mode, what the one-line message says)
    "prompt tuning per task": (
        {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4},
        "per_task",
        ["peft.mode='per_task': prompt methods (PROMPT_TUNING) run in mode 'shared'"],
    ),
    "unknown peft_type": (
        {"peft_type": "LORAX", "r": 4},
        "shared",
        ["peft.config.peft_type='LORAX' is not a PEFT method; choose one of [", "'LORA'", "'IA3'"],
    ),
    "target_modules match nothing": (
        {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj", "v_proj"]},
        "per_task",
        ["peft.config cannot be applied to this bert encoder: Target modules {", "'q_proj'", "'v_proj'", "not found"],
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_peft_config_is_one_line(tiny_encoder_dir, case):
    config, mode, expected = ERROR_CASES[case]
    model = build(tiny_encoder_dir, None)
    with pytest.raises(ConfigError) as info:
        add_adapters(model, config, mode=mode, base_model=tiny_encoder_dir)
    message = str(info.value)
    assert "\n" not in message
    assert all(part in message for part in expected), message
    assert not is_peft_model(model) and model.config.peft is None


def test_adapters_cannot_be_added_twice(tiny_encoder_dir):
    model = build(tiny_encoder_dir, LORA, "shared")
    trainable = count_parameters(model)[0]
    with pytest.raises(ConfigError) as info:
        add_adapters(model, LORA, mode="per_task", base_model=tiny_encoder_dir)
    assert str(info.value) == "the model already has PEFT adapters; merge them first (hfmtl export) or drop peft"
    assert count_parameters(model)[0] == trainable and model.config.peft["mode"] == "shared"


# --- 8. the training recipe with a peft: section ----------------------------------------------------------


def test_recipe_with_per_task_lora_saves_adapters_and_heads(tiny_encoder_dir, tmp_path):
    out = tmp_path / "out"
    config = make_config(
        tiny_encoder_dir,
        out,
        {"rte": TASK_CONFIGS["rte"], "stsb": TASK_CONFIGS["stsb"]},
        samples=32,
        eval_samples=16,
        max_steps=6,
        eval_steps=3,
        load_best_model_at_end=True,
        learning_rate=1e-2,
    )
    config["peft"] = {"mode": "per_task", "config": LORA}
    trainer = run_recipe(write_config(tmp_path / "run.yaml", config))

    assert trainer.state.global_step == 6
    for name in ("config.json", "heads.safetensors", "tokenizer.json", "config.yaml", "metrics.json"):
        assert (out / name).is_file(), name
    for task in ("rte", "stsb"):
        assert (out / "adapters" / task / "adapter_model.safetensors").is_file(), task
    assert not list(out.rglob("model.safetensors")) and not (out / "best").exists()
    assert json.loads((out / "config.json").read_text())["peft"] == {
        "mode": "per_task",
        "base_model": tiny_encoder_dir,
        "adapters": ["rte", "stsb"],
    }
    assert [e["step"] for e in json.loads((out / "metrics.json").read_text())["history"]] == [3, 6]
    assert "Loaded the best model (step " in (out / "train.log").read_text()

    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    trained = [t for t, pos in trainer.state.positions.items() if pos["batches"] > 0]
    assert trained  # and each task that trained moved its own adapter away from LoRA's zero B
    for task in trained:
        b = [p for n, p in model.encoder.named_parameters() if f"lora_B.{task}." in n]
        assert len(b) == 4 and all(p.abs().max() > 0 for p in b), task

    reloaded = MultiTaskModel.from_pretrained(out)
    batch = {k: v[:, :8] for k, v in make_batch(rows=2).items()}
    for task in ("rte", "stsb"):
        assert_reloaded_logits_equal(reloaded(task=task, **batch).logits, model(task=task, **batch).logits)
