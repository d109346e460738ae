"""All-heads inference (hfmtl/inference/shared_pass.py): several tasks, or every task, predicted with
shared encoder passes give what each task gives alone, for every task type, with the number of encoder
passes the module documents (counted by a hook on the encoder); likewise `predict_many` across
requests, per-task LoRA adapters (one `forward_mixed` pass per batch), per-task IA3 adapters (which
cannot route rows: one task per pass), and the ``predict --task a,b`` command."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import transformers
from conftest import TASK_CONFIGS, make_config, write_config
from test_predict import LONG_CONTEXT, PAIRS, SPECS, TEXTS, TOPICS_CONFIG, _approx, _perturb_heads
from transformers import AutoTokenizer

from hfmtl import MultiTaskModel, cli
from hfmtl.errors import HfmtlError
from hfmtl.inference import Predictor
from hfmtl.tasks.prediction import split_words

# ner2 reads the same words as ner; stsb16 the same pairs as stsb, but cut at 16 tokens
SHARED_SPECS = {**SPECS, "ner2": SPECS["ner"], "stsb16": SPECS["stsb"]}
ALL = list(SHARED_SPECS)


@pytest.fixture(scope="module")
def model_dir(tiny_encoder_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shared-model")
    torch.manual_seed(0)
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, SHARED_SPECS)
    _perturb_heads(model)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(path)
    tasks = {name: TASK_CONFIGS[name] for name in ("rte", "stsb", "ner", "copa", "squad")}
    tasks |= {
        "topics": TOPICS_CONFIG,
        "ner2": TASK_CONFIGS["ner"],
        "stsb16": {**TASK_CONFIGS["stsb"], "max_length": 16},
    }
    write_config(path / "config.yaml", make_config(tiny_encoder_dir, path, tasks))  # model.max_length 64
    return path


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.from_pretrained(model_dir, device="cpu", batch_size=16)


def _inputs() -> list[dict]:
    """Inputs with the fields of every task: ner reads raw text from half of them, words from the rest."""
    inputs = []
    for i, ((a, b), text) in enumerate(zip(PAIRS, TEXTS)):
        item = {"sentence1": a, "sentence2": b, "text": text, "premise": a, "question": "effect", "choices": [b, a]}
        item["context"] = LONG_CONTEXT if i == 1 else f"{a} {b}"
        if i % 2:
            item["tokens"] = text.split()
        inputs.append(item)
    return inputs


@contextlib.contextmanager
def _encoder_calls(model: MultiTaskModel) -> Iterator[list[int]]:
    """The rows of each encoder forward call made inside the block."""
    calls: list[int] = []
    handle = model.encoder.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        yield calls
    finally:
        handle.remove()


def _alone(predictor: Predictor, tasks: list[str], item: dict) -> dict:
    return {task: predictor.predict(task, item) for task in tasks}


# --- every task type: all heads at once equal each task alone -------------------------------------


def test_all_tasks_at_once_equal_each_task_alone(predictor):
    inputs = _inputs()
    together = predictor.predict("all", inputs, return_all_scores=True)
    assert [sorted(r) for r in together] == [sorted(ALL)] * len(inputs)
    for item, result in zip(inputs, together):
        alone = {task: predictor.predict(task, item, return_all_scores=True) for task in ALL}
        assert result == _approx(alone)
    assert any(together[i]["ner"] for i in range(len(inputs)))  # the perturbed heads find entities
    # one input: {task: result}; a list of task names picks tasks (repeats once)
    pair = predictor.predict(["stsb", "rte", "stsb"], inputs[0])
    assert list(pair) == ["stsb", "rte"] and pair == _approx(_alone(predictor, ["stsb", "rte"], inputs[0]))
    # shorthands apply task by task: a (text, pair) tuple for two pair tasks
    assert predictor.predict(["rte", "stsb"], [PAIRS[0]]) == [_approx(_alone(predictor, ["rte", "stsb"], PAIRS[0]))]


def test_batch_size_changes_nothing(predictor):
    inputs = _inputs()
    one = Predictor(predictor.model, predictor.tokenizer, predictor.run_config, device="cpu", batch_size=1)
    assert one.predict("all", inputs) == _approx(predictor.predict("all", inputs))


# --- encoder passes: as hfmtl/inference/shared_pass.py documents ---------------------------------


def test_tasks_that_read_the_same_fields_share_every_row(predictor):
    inputs = _inputs()
    with _encoder_calls(predictor.model) as calls:
        predictor.predict("rte", inputs)
    assert calls == [4]  # one pass, one row per input
    for tasks in (["rte", "stsb"], ["ner", "ner2"], ["rte", "stsb", "topics"]):
        with _encoder_calls(predictor.model) as calls:
            predictor.predict(tasks, inputs)
        # rte and stsb (ner and ner2) tokenize alike: their rows are encoded once; topics reads another field
        assert calls == [8 if "topics" in tasks else 4], tasks


def test_every_task_costs_one_shared_pass_and_multiple_choice_its_own(predictor):
    tok, item = predictor.tokenizer, _inputs()[0]
    with _encoder_calls(predictor.model) as calls:
        predictor.predict("all", item)
    # Distinct rows are distinct token ids: rte's = stsb's, ner's = ner2's, squad's one window; stsb16's
    # is rte's unless 16 tokens cut the pair, and topics' is ner's when the words tokenize as the text.
    pair, text = (item["sentence1"], item["sentence2"]), item["text"]
    pairs = {tuple(tok(*pair, truncation=True, max_length=n)["input_ids"]) for n in (64, 16)}
    words = split_words(text)[0]
    texts = {tuple(tok(text)["input_ids"]), tuple(tok(words, is_split_into_words=True)["input_ids"])}
    # one shared pass; copa (multiple choice, 2 choices) runs its own
    assert sorted(calls) == sorted([len(pairs) + len(texts) + 1, 2])
    # several passes once the distinct rows exceed batch_size (per chunk of batch_size inputs)
    two = Predictor(predictor.model, tok, predictor.run_config, device="cpu", batch_size=2)
    with _encoder_calls(predictor.model) as calls:
        two.predict(["rte", "stsb", "topics"], _inputs())  # 2 chunks of 2 inputs, 4 distinct rows each
    assert calls == [2, 2, 2, 2]


def test_predict_many_encodes_an_input_shared_by_requests_once(predictor):
    a, b = PAIRS[1]
    requests = [
        {"task": "rte", "sentence1": a, "sentence2": b},
        {"task": "topics", "text": a},
        {"task": "stsb", "sentence2": b, "sentence1": a, "id": 7},  # other key order, an extra key
        {"tasks": ["rte", "stsb"], "sentence1": a, "sentence2": b},
        {"task": "rte", "sentence1": b, "sentence2": a},
    ]
    with _encoder_calls(predictor.model) as calls:
        results = predictor.predict_many(requests)
    assert calls == [3]  # the pair (a, b) of requests 0, 2 and 3; a for topics; (b, a)
    expected = [
        predictor.predict(r.get("task") or r["tasks"], {k: v for k, v in r.items() if k not in ("task", "tasks")})
        for r in requests
    ]
    assert results == _approx(expected) and sorted(results[3]) == ["rte", "stsb"]
    item = _inputs()[2]
    assert predictor.predict_many([{"tasks": "all", **item}]) == [_approx(predictor.predict("all", item))]


# --- per-task adapters: LoRA routes rows in one pass, IA3 cannot ---------------------------------


def _adapter_model(tiny_encoder_dir: str, config: dict) -> MultiTaskModel:
    from hfmtl.model.adapters import add_adapters

    specs = {task: SPECS[task] for task in ("rte", "stsb", "ner", "squad", "copa")}
    torch.manual_seed(0)
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, specs)
    _perturb_heads(model)
    add_adapters(model, config, mode="per_task", base_model=tiny_encoder_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # adapters start as the identity: make each task's encoder its own
        for name, param in model.encoder.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
            elif "ia3_" in name:  # scales around 1
                param.copy_(1 + 0.5 * torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize(
    ("config", "routes"),
    [
        ({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}, True),
        (
            {
                "peft_type": "IA3",
                "target_modules": ["query", "value", "output.dense"],
                "feedforward_modules": ["output.dense"],
            },
            False,
        ),
        ({"peft_type": "LORA", "r": 4, "target_modules": ["query", "value"], "use_dora": True}, False),
    ],
    ids=["lora", "ia3", "dora"],
)
def test_per_task_adapters(tiny_encoder_dir, config, routes):
    model = _adapter_model(tiny_encoder_dir, config)
    predictor = Predictor(model, AutoTokenizer.from_pretrained(tiny_encoder_dir), device="cpu", batch_size=16)
    tasks = ["rte", "stsb", "ner", "squad", "copa"]
    inputs = [
        {"text": a, "text_pair": b, "question": "What?", "context": f"{a} {b}", "choices": [a, b]} for a, b in PAIRS
    ]
    with _encoder_calls(model) as calls:
        together = predictor.predict(tasks, inputs)
    for item, result in zip(inputs, together):
        assert result == _approx(_alone(predictor, tasks, item))
    # the adapters matter: the same pair through rte's and stsb's encoders differs
    encoded = predictor.tokenizer(*PAIRS[0], return_tensors="pt")
    with torch.no_grad():
        hidden = [model(task=t, **encoded).hidden_states for t in ("rte", "stsb")]
    assert (hidden[0] - hidden[1]).abs().max() > 1e-3
    # rows are shared within a task only: 4 each for rte, stsb, ner, squad (short contexts, one window);
    # copa (multiple choice) runs its own pass of 4 inputs x 2 choices
    assert sorted(calls) == ([8, 16] if routes else [4, 4, 4, 4, 8])


def test_forward_mixed_refuses_rows_of_several_ia3_adapters(tiny_encoder_dir):
    config = {
        "peft_type": "IA3",
        "target_modules": ["query", "value", "output.dense"],
        "feedforward_modules": ["output.dense"],
    }
    model = _adapter_model(tiny_encoder_dir, config)
    encoded = AutoTokenizer.from_pretrained(tiny_encoder_dir)(["a b", "c d"], return_tensors="pt")
    with pytest.raises(ValueError, match="per-task IA3 adapters cannot share a batch"):
        model.forward_mixed(["rte", "stsb"], **encoded)
    with torch.no_grad():  # rows of one task: that task's adapter
        alone = model(task="stsb", **encoded).logits
        torch.testing.assert_close(torch.stack(model.forward_mixed(["stsb", "stsb"], **encoded)), alone)


# --- errors ----------------------------------------------------------------------------------------


def test_errors_name_the_task_the_input_and_the_field(predictor):
    a, b = PAIRS[0]
    with pytest.raises(HfmtlError, match=r"task 'ner', input 1: missing field 'tokens' \(task 'ner' reads"):
        predictor.predict(
            ["rte", "ner"], [{"sentence1": a, "sentence2": b, "text": a}, {"sentence1": a, "sentence2": b}]
        )
    with pytest.raises(HfmtlError, match="unknown task 'rt'; did you mean 'rte'"):
        predictor.predict(["stsb", "rt"], (a, b))
    with pytest.raises(HfmtlError, match="an empty list of tasks"):
        predictor.predict([], (a, b))
    with pytest.raises(HfmtlError, match="expected a task name, a list of task names, or 'all'"):
        predictor.predict(3, (a, b))
    with pytest.raises(HfmtlError, match="request 1: has both 'task' and 'tasks'; give one"):
        predictor.predict_many([{"task": "rte", "sentence1": a, "sentence2": b}, {"task": "rte", "tasks": "all"}])
    with pytest.raises(HfmtlError, match=r"request 0: expected a mapping with a 'task' key \(or 'tasks'\)"):
        predictor.predict_many([{"sentence1": a}])
    with pytest.raises(HfmtlError, match="task 'stsb', input 1: missing field 'sentence2'"):
        predictor.predict_many(
            [{"task": "rte", "sentence1": a, "sentence2": b}, {"tasks": ["topics", "stsb"], "sentence1": a, "text": a}]
        )
    predictor.check(["rte", "stsb"], {"sentence1": a, "sentence2": b})
    with pytest.raises(ValueError, match="missing field 'text'"):
        predictor.check(["rte", "topics"], {"sentence1": a, "sentence2": b})


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_predicts_several_tasks_per_line(predictor, model_dir, tmp_path, monkeypatch, capsys):
    records = [{"id": i, **item} for i, item in enumerate(_inputs())]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    for spec, tasks in (("rte,stsb,ner", ["rte", "stsb", "ner"]), ("all", list(predictor.tasks))):
        argv = ["predict", str(model_dir), "--task", spec, "--input", str(source), "--output", str(out)]
        assert cli.main(argv) == 0
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert [{k: v for k, v in line.items() if k != "prediction"} for line in lines] == records
        assert [line["prediction"] for line in lines] == _approx(predictor.predict(tasks, _inputs()))
        assert all(list(line["prediction"]) == tasks for line in lines)
    # without --task: each line's own 'task' or 'tasks'
    mixed = [{"tasks": ["rte", "topics"], **records[0]}, {"task": "stsb", **records[1]}]
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in mixed)))
    capsys.readouterr()
    assert cli.main(["predict", str(model_dir)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prediction"] for line in lines] == _approx(predictor.predict_many(mixed))
    # a line without a field one of the tasks reads: one line naming it, and nothing written
    source.write_text(json.dumps({"sentence1": "a", "sentence2": "b"}) + "\n")
    out.unlink()
    assert (
        cli.main(["predict", str(model_dir), "--task", "rte,topics", "--input", str(source), "--output", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 1: missing field 'text' (task 'topics' reads text)" in err, err
    assert not out.exists()
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    assert "--task all" in capsys.readouterr().out


# --- a decoder backbone: left padding, and QA's rows padded on the right in passes of their own ------


def test_a_left_padding_decoder(tiny_decoder_tokenizer_dir):
    from hfmtl.model import MultiTaskConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_decoder_tokenizer_dir)
    tokenizer.pad_token, tokenizer.padding_side = "[PAD]", "left"
    llama = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
    )  # fmt: skip
    heads = {task: SPECS[task] for task in ("rte", "stsb", "ner", "squad")}
    torch.manual_seed(0)
    model = MultiTaskModel(MultiTaskConfig(encoder=llama.to_dict(), tasks=heads))
    _perturb_heads(model)
    predictor = Predictor(model, tokenizer, device="cpu")
    inputs = [{"text": a, "text_pair": b, "question": "Who?", "context": f"{a} {b}"} for a, b in PAIRS]
    with _encoder_calls(model) as calls:
        together = predictor.predict(list(heads), inputs)
    for item, result in zip(inputs, together):
        assert result == _approx(_alone(predictor, list(heads), item))
    # rte and stsb share their rows, ner's words are rows of their own: one left-padded pass; QA pads on
    # the right (Task.padding_side) and gets a pass of its own
    assert sorted(calls) == [4, 8]
