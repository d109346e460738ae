"""The inference API and CLI (hfmtl/inference/): predictions equal the model's own logits for every task
type, entity and answer offsets slice the original text, batching and task mixing change nothing, the
`predict` / `info` commands, models saved by a training run and with per-task LoRA, and the doctests."""

from __future__ import annotations

import doctest
import io
import json
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import DATA, TASK_CONFIGS, make_config, run_recipe, write_config
from transformers import AutoTokenizer

import hfmtl
from hfmtl import MultiTaskModel, cli
from hfmtl.cli.predict import model_info
from hfmtl.errors import HfmtlError
from hfmtl.inference import Predictor
from hfmtl.tasks import build_task, task_config_from_dict
from hfmtl.tasks.prediction import split_words

NER_LABELS = TASK_CONFIGS["ner"]["label_names"]
TOPICS = ["sports", "politics", "business", "science"]
TOPICS_CONFIG = {
    "type": "classification",
    "data_files": {"train": "unused.jsonl"},
    "text_column": "text",
    "multi_label": True,
    "label_names": TOPICS,
}
SPECS = {
    "rte": {
        "type": "classification",
        "num_labels": 2,
        "id2label": {0: "entailment", 1: "not_entailment"},
        "problem_type": "single_label_classification",
    },
    "topics": {
        "type": "classification",
        "num_labels": 4,
        "id2label": dict(enumerate(TOPICS)),
        "problem_type": "multi_label_classification",
    },
    "stsb": {"type": "regression", "num_labels": 1, "problem_type": "regression"},
    "ner": {"type": "token_classification", "num_labels": 9, "id2label": dict(enumerate(NER_LABELS))},
    "copa": {"type": "multiple_choice", "num_labels": 1},
    "squad": {"type": "question_answering", "num_labels": 2},
}
PAIRS = [
    ("A man is playing a guitar.", "Someone plays music."),
    ("The cat sat on the mat.", "A dog barks loudly at the mailman every single morning."),
    ("Stocks fell.", "Markets were down sharply on Monday after the announcement."),
    ("It rains.", "The ground is wet."),
]
TEXTS = [
    "Angela Merkel met Emmanuel Macron in Paris, France.",
    "  U.N.  official   Ekeus heads for Baghdad ...  ",
    "EU rejects German call to boycott British lamb!",
    "Peter Blackburn (BRUSSELS) -- the 1996/97 season's results: 3-1.",
]
LONG_CONTEXT = " ".join(
    f"In {1900 + i} the committee of region {i} met in the town of Alderbury number {i} to discuss its harvest."
    for i in range(24)
)


def _perturb_heads(model: MultiTaskModel, seed: int = 0) -> None:
    """Large random head weights: decisive, varied predictions (fresh heads give logits near 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.heads.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


@pytest.fixture(scope="module")
def model_dir(tiny_encoder_dir, tmp_path_factory) -> Path:
    """A tiny model with one head of each task type, saved with its tokenizer and a run config.yaml."""
    path = tmp_path_factory.mktemp("predict-model")
    torch.manual_seed(0)
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, SPECS)
    _perturb_heads(model)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(path)
    tasks = {name: TASK_CONFIGS[name] for name in ("rte", "stsb", "ner", "copa", "squad")} | {"topics": TOPICS_CONFIG}
    write_config(path / "config.yaml", make_config(tiny_encoder_dir, path, tasks))  # model.max_length 64
    return path


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.from_pretrained(model_dir, device="cpu", batch_size=16)


def _logits(predictor: Predictor, task: str, **encoded) -> torch.Tensor:
    with torch.no_grad():
        return predictor.model(task=task, **encoded).logits[0]


# --- every task type: predictions equal the model's own logits ----------------------------------


def test_classification_and_regression_equal_the_logits(predictor):
    tok = predictor.tokenizer
    rte = predictor.predict("rte", [{"sentence1": a, "sentence2": b} for a, b in PAIRS], return_all_scores=True)
    stsb = predictor.predict("stsb", PAIRS)  # (text, pair) tuples
    topics = predictor.predict("topics", [a for a, _ in PAIRS], top_k=2)
    for (a, b), r, s, t in zip(PAIRS, rte, stsb, topics):
        pair = tok(a, b, truncation=True, max_length=64, return_tensors="pt")
        probs = _logits(predictor, "rte", **pair).softmax(-1)
        assert r["label"] == SPECS["rte"]["id2label"][int(probs.argmax())]
        assert r["score"] == pytest.approx(float(probs.max()), abs=1e-5)
        assert [x["label"] for x in r["scores"]][0] == r["label"] and len(r["scores"]) == 2
        assert sum(x["score"] for x in r["scores"]) == pytest.approx(1.0)
        assert s == {"value": pytest.approx(float(_logits(predictor, "stsb", **pair)[0]), abs=1e-5)}
        logits = _logits(predictor, "topics", **tok(a, truncation=True, max_length=64, return_tensors="pt"))
        assert {x["label"] for x in t["labels"]} == {TOPICS[i] for i in range(4) if logits[i] > 0}
        for x in t["labels"]:
            assert x["score"] == pytest.approx(float(logits[TOPICS.index(x["label"])].sigmoid()), abs=1e-5)
        assert len(t["scores"]) == 2 and t["scores"][0]["score"] >= t["scores"][1]["score"]
    assert {len(t["labels"]) for t in topics} != {0}  # the perturbed head predicts some labels


def _expected_entities(spans: list[tuple[int, int]], tags: list[str]) -> list[tuple]:
    """IOB grouping written out plainly: (type, start, end) of each entity."""
    entities: list[list] = []
    previous = "O"
    for (start, end), tag in zip(spans, tags):
        if tag != "O" and tag.startswith("I-") and previous != "O" and previous[2:] == tag[2:]:
            entities[-1][2] = end
        elif tag != "O":
            entities.append([tag[2:], start, end])
        previous = tag
    return [tuple(e) for e in entities]


def test_token_classification_equals_the_logits_and_offsets_slice_the_text(predictor):
    tok = predictor.tokenizer
    results = predictor.predict("ner", TEXTS)
    assert sum(map(len, results)) > 4  # the perturbed head finds entities
    for text, entities in zip(TEXTS, results):
        words, spans = split_words(text)
        assert [text[s:e] for s, e in spans] == words
        encoded = tok(words, is_split_into_words=True, truncation=True, max_length=64, return_tensors="pt")
        logits = _logits(predictor, "ner", **encoded)
        tags, previous = {}, None
        for position, word in enumerate(encoded.word_ids(0)):
            if word is not None and word != previous:  # each word is tagged at its first sub-token
                tags[word] = NER_LABELS[int(logits[position].argmax())]
            previous = word
        expected = _expected_entities(spans, [tags[i] for i in range(len(words))])
        assert [(e["entity_group"], e["start"], e["end"]) for e in entities] == expected
        for e in entities:
            assert text[e["start"] : e["end"]] == e["word"]
            assert e["word"] == e["word"].strip() and 0 < e["score"] <= 1
    # pre-split words: offsets into the words joined by single spaces
    tokens = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    by_tokens = predictor.predict("ner", {"tokens": tokens})
    joined = " ".join(tokens)
    assert all(joined[e["start"] : e["end"]] == e["word"] for e in by_tokens)
    assert predictor.predict("ner", [tokens]) == [by_tokens]


def test_token_classification_windows_cover_a_long_text(predictor):
    text = " ".join(["Angela Merkel met Macron in Paris ,  and"] * 20)  # ~200 tokens, windows of 64
    entities = predictor.predict("ner", text)
    assert all(text[e["start"] : e["end"]] == e["word"] for e in entities)
    assert max(e["end"] for e in entities) > len(text) - 40  # the words past the first window are tagged


def test_iob_grouping(predictor):
    runner = predictor._runner("ner")
    item = runner.parse("a b c d e f")
    tags = ["B-PER", "I-PER", "I-LOC", "O", "I-ORG", "B-ORG"]
    entities = runner._group(item, [(t, 0.5) for t in tags])
    assert [(e["entity_group"], e["word"]) for e in entities] == [
        ("PER", "a b"),
        ("LOC", "c"),
        ("ORG", "e"),
        ("ORG", "f"),
    ]


def test_multiple_choice_equals_the_logits(predictor):
    tok = predictor.tokenizer
    inputs = [
        {"premise": "The glass fell off the table.", "question": "effect", "choices": ["It broke.", "It sang."]},
        {"premise": "The man was hungry.", "question": "cause", "choices": ["He ate.", "He slept.", "He ran far."]},
    ]
    for item, result in zip(inputs, predictor.predict("copa", inputs)):
        first = f"{item['premise']} {item['question']}"
        encoded = tok([first] * len(item["choices"]), item["choices"], padding=True, return_tensors="pt")
        logits = _logits(predictor, "copa", **{k: v[None] for k, v in encoded.items()})
        assert result["choice"] == int(logits.argmax())
        assert result["probabilities"] == pytest.approx(logits.softmax(-1).tolist(), abs=1e-5)


def _direct_answer(predictor: Predictor, question: str, context: str) -> dict:
    """The answer evaluation would pick: the task's own windows and decode over the model's logits."""
    task = build_task("squad", task_config_from_dict("squad", TASK_CONFIGS["squad"]))
    features = task.preprocess_eval(
        {"id": ["q"], "question": [question], "context": [context]}, predictor.tokenizer, 128
    )
    rows = [{k: features[k][i] for k in features} for i in range(len(features["input_ids"]))]
    with torch.no_grad():
        logits = predictor.model(task="squad", **task.collate(rows, predictor.tokenizer)).logits
    outputs = [{"start_logits": logits[..., 0].numpy(), "end_logits": logits[..., 1].numpy()}]
    answer = task.decode(outputs, features, [{"id": "q", "context": context}])["q"]
    return {"windows": len(rows), **answer}


@pytest.mark.parametrize("long", [False, True], ids=["short", "several-windows"])
def test_question_answering_equals_the_decoded_logits(predictor, long):
    question = "When did the committee of region 17 meet?"
    context = LONG_CONTEXT if long else "The committee met in 1917 in the town hall of Alderbury."
    result = predictor.predict("squad", {"question": question, "context": context})
    expected = _direct_answer(predictor, question, context)
    assert (expected["windows"] > 2) == long
    assert result["answer"] == expected["text"] and result["start"] == expected["answer_start"]
    assert context[result["start"] : result["end"]] == result["answer"] != ""
    assert 0 < result["score"] <= 1


# --- batching, mixing, defaults, errors ----------------------------------------------------------


def _all_requests() -> list[dict]:
    rte = [{"task": "rte", "sentence1": a, "sentence2": b} for a, b in PAIRS]
    ner = [{"task": "ner", "text": t} for t in TEXTS]
    squad = [{"task": "squad", "question": "Which town?", "context": LONG_CONTEXT[: 200 * (i + 1)]} for i in range(3)]
    copa = [{"task": "copa", "premise": "It rained.", "question": "effect", "choices": ["Wet.", "Dry.", "Hot."]}]
    stsb = [{"task": "stsb", "sentence1": a, "sentence2": b} for a, b in PAIRS]
    topics = [{"task": "topics", "text": a} for a, _ in PAIRS]
    # interleaved, so that grouping by task has to restore the order
    return [r for group in zip(rte, ner, squad * 2, copa * 4, stsb, topics) for r in group]


def _approx(results):
    return json.loads(json.dumps(results), parse_float=lambda x: pytest.approx(float(x), abs=1e-5))


def test_batch_size_and_task_mixing_change_nothing(predictor):
    requests = _all_requests()
    one = Predictor(predictor.model, predictor.tokenizer, predictor.run_config, device="cpu", batch_size=1)
    mixed = one.predict_many(requests)
    assert _approx(predictor.predict_many(requests)) == mixed
    for request, result in zip(requests, mixed):
        alone = predictor.predict(request["task"], {k: v for k, v in request.items() if k != "task"})
        assert _approx(alone) == result


def test_defaults_without_a_run_config_and_errors(predictor, tiny_encoder_dir):
    bare = Predictor(predictor.model, predictor.tokenizer, device="cpu")  # no config.yaml: documented names
    assert bare.fields("rte") == ["text", "text_pair"] and bare.fields("copa") == ["context", "question", "choices"]
    a, b = PAIRS[0]
    assert _approx(bare.predict("rte", {"text": a, "text_pair": b})) == predictor.predict("rte", (a, b))
    assert "label" in bare.predict("rte", a)  # the pair is optional without a run config
    with pytest.raises(HfmtlError, match=r"task 'rte', input 1: missing field 'sentence2' \(task 'rte' reads"):
        predictor.predict("rte", [(a, b), {"sentence1": a}])
    with pytest.raises(HfmtlError, match="unknown task 'rt'; did you mean 'rte'"):
        predictor.predict("rt", a)
    with pytest.raises(HfmtlError, match="field 'choices' must be a list of strings"):
        predictor.predict("copa", {"premise": "p", "question": "q", "choices": "not a list"})
    with pytest.raises(HfmtlError, match="not an hfmtl multi-task model"):
        Predictor.from_pretrained(tiny_encoder_dir)  # a plain BERT


# --- the CLI -------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    """`hfmtl ...` in this process."""
    return cli.main(argv)


def _rte_records(n: int = 5) -> list[dict]:
    lines = (DATA / "rte" / "validation.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def test_cli_predict_round_trips_a_jsonl_file(predictor, model_dir, tmp_path):
    records = _rte_records()
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records[:3]) + "\n\n" + json.dumps(records[3]) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["predict", str(model_dir), "--task", "rte", "--input", str(source), "--output", str(out)]
    assert _cli([*argv, "--batch-size", "2"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    expected = predictor.predict("rte", records[:4])
    assert [{k: v for k, v in line.items() if k != "prediction"} for line in lines] == records[:4]
    assert [line["prediction"] for line in lines] == _approx(expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temporary file left


def test_cli_predict_stdin_to_stdout_with_mixed_tasks(predictor, model_dir, monkeypatch, capsys):
    requests = _all_requests()[:8]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in requests)))
    assert _cli(["predict", str(model_dir), "--input", "-", "--output", "-"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prediction"] for line in lines] == _approx(predictor.predict_many(requests))
    assert [line["task"] for line in lines] == [r["task"] for r in requests]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        (
            '{"sentence1": "only one sentence"}',
            "line 3: missing field 'sentence2' (task 'rte' reads sentence1, sentence2)",
        ),
        ('{"sentence1": "a", "sentence2": ', "line 3: not valid JSON"),
        ('["a", "b"]', "line 3: expected a JSON object, got list"),
    ],
)
def test_cli_bad_line_is_one_line_and_writes_nothing(model_dir, tmp_path, capsys, bad_line, message):
    records = [json.dumps(r) for r in _rte_records(4)]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join([*records[:2], bad_line, *records[2:]]) + "\n")
    out = tmp_path / "out.jsonl"
    assert _cli(["predict", str(model_dir), "--task", "rte", "--input", str(source), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {source} {message}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_cli_info(model_dir, capsys):
    assert _cli(["info", str(model_dir)]) == 0
    text = capsys.readouterr().out
    for expected in (
        "rte",
        "classification",
        "2 labels: entailment, not_entailment",
        "inputs: sentence1, sentence2",
        "topics  classification (multi-label)",
        "inputs: premise, question, choices",
        "9 labels: O, B-PER",
        "peft        none",
        "metrics     none",
    ):
        assert expected in text, expected
    assert _cli(["info", str(model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tasks"]["ner"]["labels"] == NER_LABELS and info["encoder"]["num_layers"] == 2
    assert info["tasks"]["squad"]["inputs"] == "question, context" and info["max_length"] == 64


# --- models saved by training, and with PEFT adapters ----------------------------------------------


def test_a_model_saved_by_training_loads_through_the_api_and_automodel(
    tiny_encoder_dir, tmp_path, fresh_accelerate_state
):
    out = tmp_path / "out"
    tasks = {"rte": TASK_CONFIGS["rte"], "ner": TASK_CONFIGS["ner"]}
    run_recipe(
        write_config(
            tmp_path / "run.yaml", make_config(tiny_encoder_dir, out, tasks, samples=16, eval_samples=8, max_steps=2)
        )
    )
    predictor = Predictor.from_pretrained(out, device="cpu")
    model = transformers.AutoModel.from_pretrained(out).eval()  # through the Auto class registered by `import hfmtl`
    assert isinstance(model, hfmtl.MultiTaskModel)
    tok = AutoTokenizer.from_pretrained(out)
    for a, b in PAIRS:
        with torch.no_grad():
            logits = model(task="rte", **tok(a, b, truncation=True, max_length=64, return_tensors="pt")).logits[0]
        result = predictor.predict("rte", {"sentence1": a, "sentence2": b})
        assert result == {
            "label": model.config.tasks["rte"]["id2label"][int(logits.argmax())],
            "score": pytest.approx(float(logits.softmax(-1).max()), abs=1e-5),
        }
    assert all(isinstance(e, list) for e in predictor.predict("ner", TEXTS))
    info = model_info(str(out))
    assert info["metrics"]["step"] == 2 and set(info["metrics"]["tasks"]) == {"rte", "ner"}


def test_a_per_task_lora_model(tiny_encoder_dir, tmp_path, capsys):
    from hfmtl.model.adapters import add_adapters

    specs = {"rte": SPECS["rte"], "stsb": SPECS["stsb"], "ner": SPECS["ner"]}
    torch.manual_seed(0)
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, specs)
    _perturb_heads(model)
    lora = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}
    add_adapters(model, lora, mode="per_task", base_model=tiny_encoder_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero: make the adapters matter
        for name, param in model.encoder.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    saved = tmp_path / "lora"
    model.save_pretrained(saved)
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(saved)
    model.eval()

    predictor = Predictor.from_pretrained(saved, device="cpu")  # no config.yaml: default field names
    tok = predictor.tokenizer
    results = predictor.predict_many(
        [{"task": t, "text": a, "text_pair": b} for a, b in PAIRS for t in ("rte", "stsb")]
    )
    for (a, b), rte, stsb in zip(PAIRS, results[::2], results[1::2]):
        encoded = tok(a, b, truncation=True, max_length=512, return_tensors="pt")
        with torch.no_grad():
            rte_logits, stsb_value = model(task="rte", **encoded).logits[0], model(task="stsb", **encoded).logits[0, 0]
        assert rte["label"] == SPECS["rte"]["id2label"][int(rte_logits.argmax())]
        assert stsb["value"] == pytest.approx(float(stsb_value), abs=1e-5)
    assert _cli(["info", str(saved)]) == 0
    assert "peft        LORA r=4, one adapter per task (rte, stsb, ner)" in capsys.readouterr().out


# --- the docstring examples run -------------------------------------------------------------------


def test_docstring_examples_run(model_dir, predictor):
    import hfmtl.cli.predict as cli_module
    import hfmtl.inference.predictor as predictor_module
    import hfmtl.inference.saved_tasks as saved_tasks_module
    import hfmtl.inference.shared_pass as shared_pass_module
    import hfmtl.tasks.prediction as prediction_module

    globs = {"model_dir": str(model_dir), "predictor": predictor}
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    examples = 0
    for module in (predictor_module, cli_module, saved_tasks_module, shared_pass_module, prediction_module):
        for test in finder.find(module, extraglobs=globs):
            # --doctest-modules skips these (they need a trained model): here they run, with one
            for example in test.examples:
                example.options.pop(doctest.SKIP, None)
            runner.run(test)
            examples += len(test.examples)
    assert runner.failures == 0 and examples >= 10
