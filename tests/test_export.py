"""Export of one task to a standard transformers model: every task type and encoder family either
exports with hfmtl's exact logits (in-process and through `pipeline` where hfmtl cannot be imported),
or is refused with one clear line and nothing written."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers

from hfmtl import HfmtlError, MultiTaskConfig, MultiTaskModel, cli
from hfmtl.model.adapters import add_adapters, is_peft_model
from hfmtl.publish import head_layouts
from hfmtl.publish.export import export_model_dir, export_task

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
# the families' default vocabularies: every id of the tests' tiny tokenizer fits
ENCODERS = {
    "bert": transformers.BertConfig(**TINY),
    "roberta": transformers.RobertaConfig(**TINY, pad_token_id=1),
    "deberta-v2": transformers.DebertaV2Config(**TINY),
    "electra": transformers.ElectraConfig(**TINY, embedding_size=32),
    "distilbert": transformers.DistilBertConfig(dim=64, n_layers=2, n_heads=2, hidden_dim=128),
}
LABELS = ["entailment", "not_entailment"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
HEADS = {
    "rte": {
        "type": "classification",
        "num_labels": 2,
        "id2label": dict(enumerate(LABELS)),
        "problem_type": "single_label_classification",
    },
    "topics": {
        "type": "classification",
        "num_labels": 3,
        "id2label": {0: "sport", 1: "politics", 2: "science"},
        "problem_type": "multi_label_classification",
    },
    "stsb": {"type": "regression", "num_labels": 1, "problem_type": "regression"},
    "ner": {"type": "token_classification", "num_labels": len(TAGS), "id2label": dict(enumerate(TAGS))},
    "copa": {"type": "multiple_choice", "num_labels": 1},
    "squad": {"type": "question_answering", "num_labels": 2},
}
AUTO_CLASSES = {
    "classification": transformers.AutoModelForSequenceClassification,
    "regression": transformers.AutoModelForSequenceClassification,
    "token_classification": transformers.AutoModelForTokenClassification,
    "multiple_choice": transformers.AutoModelForMultipleChoice,
    "question_answering": transformers.AutoModelForQuestionAnswering,
}
PREMISES = ["A man is playing a guitar on stage.", "The cat sat quietly."]
HYPOTHESES = ["Someone makes music.", "A dog is barking loudly at the mailman."]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return transformers.AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def make_model(family: str, tasks: dict[str, dict], pooling: str = "cls") -> MultiTaskModel:
    """A tiny random model whose heads are far from their (near-zero) initialisation."""
    torch.manual_seed(0)
    model = MultiTaskModel(MultiTaskConfig(encoder=ENCODERS[family].to_dict(), tasks=tasks, pooling=pooling))
    with torch.no_grad():
        for param in model.heads.parameters():
            param.normal_(0.0, 0.3)
    return model.eval()


def text_batch(tokenizer, task_type: str) -> dict[str, torch.Tensor]:
    """Real tokenized text in the shape each task type takes, padded (rows of different lengths)."""
    if task_type == "multiple_choice":
        choices = [["He went home.", "He ate a large sandwich for lunch.", "Rain."]] * 2
        firsts = [p for p in PREMISES for _ in range(3)]
        flat = tokenizer(firsts, [c for row in choices for c in row], padding=True, return_tensors="pt")
        return {k: v.view(2, 3, -1) for k, v in flat.items()}
    if task_type == "token_classification":
        return tokenizer(PREMISES, padding=True, return_tensors="pt")
    return tokenizer(HYPOTHESES, PREMISES, padding=True, return_tensors="pt")


def standard_logits(standard: transformers.PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    accepted = inspect.signature(standard.forward).parameters  # DistilBERT takes no token_type_ids
    with torch.no_grad():
        out = standard(**{k: v for k, v in batch.items() if k in accepted})
    return torch.stack([out.start_logits, out.end_logits], -1) if hasattr(out, "start_logits") else out.logits


def assert_exports_exactly(model: MultiTaskModel, task_name: str, tokenizer, out) -> transformers.PreTrainedModel:
    spec = model.config.tasks[task_name]
    assert export_task(model, task_name, out, tokenizer) == out
    standard = AUTO_CLASSES[spec["type"]].from_pretrained(out).eval()
    batch = text_batch(tokenizer, spec["type"])
    with torch.no_grad():
        expected = model(task=task_name, **batch).logits
    torch.testing.assert_close(standard_logits(standard, batch), expected, atol=1e-5, rtol=1e-4)
    return standard


@pytest.mark.parametrize("task_name", sorted(HEADS))
def test_every_task_type_on_bert_exports_with_its_labels_and_logits(task_name, tokenizer, tmp_path):
    model = make_model("bert", HEADS, pooling="cls")
    standard = assert_exports_exactly(model, task_name, tokenizer, tmp_path / "out")
    spec = HEADS[task_name]
    assert type(standard).__name__ == "Bert" + AUTO_CLASSES[spec["type"]].__name__.removeprefix("AutoModel")
    if "id2label" in spec:
        assert standard.config.id2label == spec["id2label"]
        assert standard.config.label2id == {name: i for i, name in spec["id2label"].items()}
    assert standard.config.problem_type == spec.get("problem_type")
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    assert model.training is False  # the caller's mode is left as it was


@pytest.mark.parametrize(
    ("family", "task_name"),
    [
        ("roberta", "rte"),
        ("roberta", "copa"),
        ("deberta-v2", "rte"),
        ("deberta-v2", "stsb"),
        ("electra", "copa"),
        ("electra", "ner"),
        ("distilbert", "ner"),
        ("distilbert", "squad"),
    ],
)
def test_other_families_export_exactly(family, task_name, tokenizer, tmp_path):
    model = make_model(family, {task_name: HEADS[task_name]})
    assert_exports_exactly(model, task_name, tokenizer, tmp_path / "out")


@pytest.mark.parametrize(
    ("family", "task_name", "pooling", "reason"),
    [
        ("electra", "rte", "cls", "ELECTRA's classification head applies a fixed GELU"),
        ("distilbert", "stsb", "cls", "DistilBERT's head applies a fixed ReLU"),
        ("distilbert", "copa", "cls", "DistilBERT's head applies a fixed ReLU"),
        ("bert", "rte", "mean", "it pools with 'mean' but transformers' heads read the first token only"),
    ],
)
def test_heads_without_an_exact_standard_equivalent_are_refused(family, task_name, pooling, reason, tmp_path):
    model = make_model(family, {task_name: HEADS[task_name]}, pooling=pooling)
    with pytest.raises(HfmtlError, match=reason) as err:
        export_task(model, task_name, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


# Every family of the export's table, smaller still: each task type exports (the export checks its own
# logits) or is refused, as transformers' head classes allow.
SMALL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
SMALL_ENCODERS = {
    "bert": transformers.BertConfig(**SMALL, vocab_size=120),
    "roberta": transformers.RobertaConfig(**SMALL, vocab_size=120, pad_token_id=1),
    "xlm-roberta": transformers.XLMRobertaConfig(**SMALL, vocab_size=120, pad_token_id=1),
    "camembert": transformers.CamembertConfig(**SMALL, vocab_size=120, pad_token_id=1),
    "deberta": transformers.DebertaConfig(**SMALL, vocab_size=120),
    "deberta-v2": transformers.DebertaV2Config(**SMALL, vocab_size=120),
    "electra": transformers.ElectraConfig(**SMALL, vocab_size=120, embedding_size=16),
    "distilbert": transformers.DistilBertConfig(vocab_size=120, dim=32, n_layers=1, n_heads=2, hidden_dim=64),
    "albert": transformers.AlbertConfig(**SMALL, vocab_size=120, embedding_size=16),
    "mpnet": transformers.MPNetConfig(**SMALL, vocab_size=120, pad_token_id=1),
}
REFUSED = {
    ("deberta", "multiple_choice"),
    ("electra", "classification"),
    ("electra", "regression"),
    ("distilbert", "classification"),
    ("distilbert", "regression"),
    ("distilbert", "multiple_choice"),
}


@pytest.mark.parametrize("family", sorted(SMALL_ENCODERS))
def test_every_family_of_the_table_exports_exactly_or_is_refused(family, tmp_path):
    assert set(SMALL_ENCODERS) == set(head_layouts.FAMILIES)
    torch.manual_seed(0)
    model = MultiTaskModel(MultiTaskConfig(encoder=SMALL_ENCODERS[family].to_dict(), tasks=HEADS))
    for task_name, spec in HEADS.items():
        out = tmp_path / task_name
        if (family, spec["type"]) in REFUSED:
            with pytest.raises(HfmtlError, match=f"cannot export task '{task_name}'"):
                export_task(model, task_name, out)
            assert not out.exists()
        else:
            export_task(model, task_name, out)
            assert (out / "model.safetensors").is_file()


def test_a_pooled_head_of_an_encoder_type_outside_the_table_is_refused(tmp_path):
    qwen2 = transformers.Qwen2Config(**TINY, num_key_value_heads=1, pad_token_id=0)
    model = MultiTaskModel(MultiTaskConfig(encoder=qwen2.to_dict(), tasks={"rte": HEADS["rte"]}))
    with pytest.raises(HfmtlError, match=r"Qwen2ForSequenceClassification's head is \['score'\], where hfmtl's"):
        export_task(model, "rte", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_mapping_that_changes_the_logits_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    # without pooler_hidden_act=tanh, DeBERTa's ContextPooler applies GELU: only the logit check can tell
    family = head_layouts.FAMILIES["deberta-v2"]
    broken = head_layouts.Family(family.sequence, family.choice, head_layouts.classifier_dropout)
    monkeypatch.setitem(head_layouts.FAMILIES, "deberta-v2", broken)
    model = make_model("deberta-v2", {"rte": HEADS["rte"]})
    with pytest.raises(
        HfmtlError, match="DebertaV2ForSequenceClassification gives logits up to .* nothing was written"
    ):
        export_task(model, "rte", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_target_needs_overwrite_and_is_then_replaced(tmp_path):
    model = make_model("bert", {"rte": HEADS["rte"]})
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(HfmtlError, match="exists and is not empty .*overwrite"):
        export_task(model, "rte", out)
    assert os.listdir(out) == ["stale.txt"]
    export_task(model, "rte", out, overwrite=True)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary directory left beside it


def test_an_encoder_that_is_not_a_plain_transformers_model_is_refused(tmp_path):
    model = make_model("bert", {"rte": HEADS["rte"]})
    model.encoder = torch.nn.Sequential(model.encoder)  # what a PEFT wrapper looks like to the export
    with pytest.raises(HfmtlError, match="not a plain transformers model: merge its adapters"):
        export_task(model, "rte", tmp_path / "out")


# Runs where hfmtl cannot be imported: the export must stand on transformers alone.
PIPELINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["hfmtl"] = None
    try:
        import hfmtl
    except ImportError:
        pass
    else:
        raise SystemExit("hfmtl is importable")
    from transformers import pipeline
    rte_dir, ner_dir, premise, hypothesis = sys.argv[1:]
    classify = pipeline("text-classification", model=rte_dir, function_to_apply="none", top_k=None)
    scores = classify({"text": hypothesis, "text_pair": premise})
    tag = pipeline("token-classification", model=ner_dir, aggregation_strategy="none", ignore_labels=[])
    tokens = [{"index": t["index"], "entity": t["entity"], "score": float(t["score"])} for t in tag(premise)]
    print(json.dumps({"rte": {s["label"]: s["score"] for s in scores}, "ner": tokens}))
    """
)


def test_pipelines_without_hfmtl_give_hfmtl_logits(tokenizer, tmp_path):
    model = make_model("bert", {"rte": HEADS["rte"], "ner": HEADS["ner"]})
    export_task(model, "rte", tmp_path / "rte", tokenizer)
    export_task(model, "ner", tmp_path / "ner", tokenizer)
    premise, hypothesis = PREMISES[0], HYPOTHESES[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [str(tmp_path / "rte"), str(tmp_path / "ner"), premise, hypothesis]
    proc = subprocess.run(
        [sys.executable, "-c", PIPELINE_SCRIPT, *args], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    with torch.no_grad():
        rte = model(task="rte", **tokenizer(hypothesis, premise, return_tensors="pt")).logits[0]
        ner = model(task="ner", **tokenizer(premise, return_tensors="pt")).logits[0].softmax(-1)
    assert result["rte"] == pytest.approx({name: rte[i].item() for i, name in enumerate(LABELS)}, abs=1e-5)
    length = tokenizer(premise, return_tensors="pt")["input_ids"].shape[1]
    assert [t["index"] for t in result["ner"]] == list(range(1, length - 1))  # every token but [CLS] / [SEP]
    for token in result["ner"]:
        assert token["entity"] == TAGS[ner[token["index"]].argmax()]
        assert token["score"] == pytest.approx(ner[token["index"]].max().item(), abs=1e-5)


@pytest.fixture(scope="module")
def saved_model_dir(tiny_encoder_dir, tokenizer, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("hfmtl-model")
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": HEADS["rte"], "ner": HEADS["ner"]})
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_cli_exports_a_saved_model_with_its_tokenizer(saved_model_dir, tmp_path, capsys):
    out = tmp_path / "rte"
    assert cli.main(["export", saved_model_dir, "--task", "rte", "--out", str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    assert "exported task 'rte'" in capsys.readouterr().out
    config = transformers.AutoConfig.from_pretrained(out)
    assert config.architectures == ["BertForSequenceClassification"] and config.id2label == dict(enumerate(LABELS))


def test_cli_unknown_task_is_one_line_naming_the_known_tasks(saved_model_dir, tmp_path, capsys):
    assert cli.main(["export", saved_model_dir, "--task", "mnli", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == "error: unknown task 'mnli'; this model has tasks ['ner', 'rte']\n"
    assert not (tmp_path / "out").exists()


def test_cli_on_a_directory_that_is_not_an_hfmtl_model_is_one_line(tiny_encoder_dir, tmp_path, capsys):
    assert cli.main(["export", tiny_encoder_dir, "--task", "rte", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds a 'bert' model, not an hfmtl multi-task model" in err
    assert err.count("\n") == 1


def test_export_of_a_model_saved_without_its_tokenizer_says_how_to_fix_it(tmp_path):
    make_model("bert", {"rte": HEADS["rte"]}).save_pretrained(tmp_path / "model")
    with pytest.raises(HfmtlError, match="no usable tokenizer in .*tokenizer.save_pretrained"):
        export_model_dir(tmp_path / "model", "rte", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- PEFT: adapters are merged into a copy of the weights on export --------------------------------

LORA = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}


def make_lora_model(mode: str, tmp_path) -> MultiTaskModel:
    model = make_model("bert", {"rte": HEADS["rte"], "ner": HEADS["ner"]})
    add_adapters(model, LORA, mode=mode, base_model=str(tmp_path / "unused"))
    with torch.no_grad():  # LoRA's B starts at zero: move it, or merging would change nothing
        for name, param in model.encoder.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    return model.eval()


@pytest.mark.parametrize("mode", ["shared", "per_task"])
def test_lora_adapters_are_merged_on_export_and_the_model_keeps_them(mode, tokenizer, tmp_path):
    model = make_lora_model(mode, tmp_path)
    for task_name in ("rte", "ner"):
        assert_exports_exactly(model, task_name, tokenizer, tmp_path / task_name)
    assert is_peft_model(model) and model.config.peft["mode"] == mode  # the caller's model is untouched
    # the adapters matter: without them the exported logits would differ
    batch = text_batch(tokenizer, "classification")
    with torch.no_grad(), model.encoder.disable_adapter():
        bare = model(task="rte", **batch).logits
    exported = AUTO_CLASSES["classification"].from_pretrained(tmp_path / "rte").eval()
    assert not torch.allclose(standard_logits(exported, batch), bare, atol=1e-3)


def test_cli_exports_a_saved_lora_model(tiny_encoder_dir, tokenizer, tmp_path):
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": HEADS["rte"]})
    add_adapters(model, LORA, mode="per_task", base_model=tiny_encoder_dir)
    with torch.no_grad():
        for name, param in model.encoder.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / "model.safetensors").exists()  # adapters + heads only
    assert cli.main(["export", str(tmp_path / "saved"), "--task", "rte", "--out", str(tmp_path / "rte")]) == 0
    batch = text_batch(tokenizer, "classification")
    with torch.no_grad():
        expected = model.eval()(task="rte", **batch).logits
    exported = AUTO_CLASSES["classification"].from_pretrained(tmp_path / "rte").eval()
    torch.testing.assert_close(standard_logits(exported, batch), expected, atol=1e-5, rtol=1e-4)


def test_prompt_tuning_cannot_be_merged_and_is_refused(tmp_path):
    model = make_model("bert", {"rte": HEADS["rte"]})
    add_adapters(model, {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}, mode="shared", base_model="x")
    with pytest.raises(HfmtlError, match="virtual tokens that cannot be folded into the weights"):
        export_task(model, "rte", tmp_path / "out")
    assert not (tmp_path / "out").exists()
