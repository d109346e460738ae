"""Every task type, end to end and in its details, on the tiny random encoder and real data slices.

The end-to-end, save/reload and bad-data tests are parametrized over conftest's `TASK_CONFIGS`: a task
type added there is trained, evaluated, reloaded and fed bad data here with no change to this file.
The other tests pin down what each shipped type owns: sub-word label alignment, QA windows and span
decoding, padded choices, label mapping and multi-label classification.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re

import datasets
import numpy as np
import pytest
import torch
import transformers
from conftest import TASK_CONFIGS, assert_reloaded_logits_equal
from torch.nn import functional as F

import hfmtl
from hfmtl.errors import ConfigError, DataError
from hfmtl.tasks import task_config_from_dict
from hfmtl.training.data import build_eval_loader, load_raw_splits, prepare_task_data
from hfmtl.training.evaluation import evaluate_tasks

TASK_NAMES = list(TASK_CONFIGS)
MAX_LENGTH = 64
SAMPLES = 16  # train and eval examples per task

# Metric keys of each shipped task type and the range of each; a type not listed here must still give
# its main metric, and every value must be finite.
METRIC_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "classification": {"accuracy": (0, 1), "f1": (0, 1)},
    "regression": {"pearson": (-1, 1), "spearman": (-1, 1)},
    "token_classification": {"precision": (0, 1), "recall": (0, 1), "f1": (0, 1), "accuracy": (0, 1)},
    "multiple_choice": {"accuracy": (0, 1)},
    "question_answering": {"exact_match": (0, 1), "f1": (0, 1)},
}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread while this module runs: on the shared 2-core machine two threads that fight
    another job's threads made a tiny-encoder training step ~10x slower (measured: 370 ms vs 30 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir):
    return transformers.AutoTokenizer.from_pretrained(tiny_encoder_dir)


@pytest.fixture(scope="module")
def prepared(tokenizer):
    """`prepared(task_name) -> (task, TaskData)` on SAMPLES train / eval examples, tokenized once."""
    cache = {}

    def get(task_name: str):
        if task_name not in cache:
            task = make_task(task_name, max_train_samples=SAMPLES, max_eval_samples=SAMPLES)
            cache[task_name] = task, prepare_task_data(task, tokenizer, MAX_LENGTH, contextlib.nullcontext)
        return cache[task_name]

    return get


@pytest.fixture
def accelerator():
    """A CPU Accelerator from a clean state: Accelerate keeps process-wide singletons between tests."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def make_task(task_name: str, **overrides):
    """The Task of conftest's config `task_name`, with some of its keys overridden."""
    return hfmtl.build_task(task_name, task_config_from_dict(task_name, {**TASK_CONFIGS[task_name], **overrides}))


def rows_to_columns(rows: list[dict]) -> dict[str, list]:
    """A list of examples as the column dict that `Dataset.map(batched=True)` hands to `preprocess`."""
    return {key: [row[key] for row in rows] for key in rows[0]}


def feature_rows(features: dict[str, list]) -> list[dict]:
    """The column dict returned by `preprocess` as the list of per-feature dicts `collate` takes."""
    return [dict(zip(features, values)) for values in zip(*features.values())]


def read_jsonl(path, limit: int | None) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in itertools.islice(f, limit)]


def mean_loss(model, task_name: str, batches: list[dict]) -> float:
    """The model's loss averaged over `batches`, in eval mode (no dropout), without gradients."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = float(np.mean([model(task=task_name, **batch).loss.item() for batch in batches]))
    model.train(was_training)
    return loss


def overfit(model, task_name: str, batches: list[dict], passes: int, lr: float = 1e-3) -> tuple[float, float]:
    """Train on the same few batches `passes` times; the eval-mode loss over them before and after."""
    before = mean_loss(model, task_name, batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(passes):
        for batch in batches:
            model(task=task_name, **batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return before, mean_loss(model, task_name, batches)


# ------------------------------------------------------------------------------------------------
# Every task type: train, evaluate, save and reload


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_task_overfits_a_fixed_batch_and_evaluates(task_name, tiny_encoder_dir, tokenizer, prepared, accelerator):
    task, data = prepared(task_name)
    torch.manual_seed(0)
    model = hfmtl.MultiTaskModel.from_encoder(tiny_encoder_dir, {task_name: task.head_spec()})
    batches = [task.collate([data.train[i] for i in range(start, start + 4)], tokenizer) for start in (0, 4)]

    before, after = overfit(model, task_name, batches, passes=25)

    assert math.isfinite(before) and before > 0
    assert after < 0.7 * before, f"{task_name}: loss {before:.4f} -> {after:.4f}"

    loader = build_eval_loader(task, data.eval_features, tokenizer, batch_size=8)
    results = evaluate_tasks(model, {task_name: task}, {task_name: data}, {task_name: loader}, accelerator)

    assert model.training  # evaluate_tasks puts back the mode it found
    ranges = METRIC_RANGES.get(task.type_name, {task.main_metric: (-math.inf, math.inf)})
    expected = {f"eval/{task_name}/{key}" for key in ranges} | {"eval/mean"}
    if task.type_name in METRIC_RANGES:
        assert set(results) == expected
    else:
        assert expected <= set(results)
    for key, value in results.items():
        assert math.isfinite(value), (key, value)
    for key, (low, high) in ranges.items():
        assert low <= results[f"eval/{task_name}/{key}"] <= high, key
    assert results["eval/mean"] == results[f"eval/{task_name}/{task.main_metric}"]


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_saved_model_reloads_through_automodel_with_identical_logits(
    task_name, tiny_encoder_dir, tokenizer, prepared, tmp_path
):
    task, data = prepared(task_name)
    torch.manual_seed(0)
    model = hfmtl.MultiTaskModel.from_encoder(tiny_encoder_dir, {task_name: task.head_spec()})
    # one step, so that encoder and head hold weights no initialisation could reproduce
    overfit(model, task_name, [task.collate([data.train[i] for i in range(4)], tokenizer)], passes=1)
    batch = task.collate([data.eval_features[i] for i in range(4)], tokenizer)
    batch.pop("labels", None)
    model.eval()
    with torch.no_grad():
        expected = model(task=task_name, **batch).logits

    model.save_pretrained(tmp_path)
    reloaded, info = transformers.AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    reloaded.eval()
    with torch.no_grad():
        actual = reloaded(task=task_name, **batch).logits

    assert type(reloaded) is hfmtl.MultiTaskModel
    assert reloaded.config.tasks == model.config.tasks == {task_name: task.head_spec()}
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert actual.shape == expected.shape
    assert_reloaded_logits_equal(actual, expected)


def test_a_main_metric_of_unknown_direction_must_be_declared():
    config = task_config_from_dict("sts", {**TASK_CONFIGS["stsb"], "metrics": ["evaluate:./metrics/closeness.py"]})
    task = hfmtl.build_task("sts", config)
    assert task.main_metric == "closeness"
    with pytest.raises(ConfigError, match=r"tasks.sts.main_metric='closeness'.*set tasks.sts.greater_is_better"):
        _ = task.greater_is_better
    config.greater_is_better = False
    assert task.greater_is_better is False
    assert task.signed_main_metric({"closeness": 0.25}) == -0.25
    mse = hfmtl.build_task("sts", task_config_from_dict("sts", {**TASK_CONFIGS["stsb"], "metrics": ["mse"]}))
    assert mse.greater_is_better is False and mse.signed_main_metric({"mse": 0.5}) == -0.5


def test_from_encoder_keeps_the_pretrained_encoder_weights(tiny_encoder_dir):
    # the heads are initialised in post_init; the pretrained encoder must not be re-initialised with them
    model = hfmtl.MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": {"type": "classification", "num_labels": 2}})
    pretrained = transformers.AutoModel.from_pretrained(tiny_encoder_dir, add_pooling_layer=False).state_dict()
    weights = model.encoder.state_dict()
    assert set(weights) == set(pretrained)
    for key, value in pretrained.items():
        assert torch.equal(weights[key], value), key


def test_regression_loss_is_the_mse_of_one_score_per_example(tiny_encoder_dir, tokenizer, prepared):
    # the overfit test alone cannot tell a right MSE from one broadcast to (batch, batch): on the tiny
    # encoder both first fall to the labels' variance by predicting their mean
    task, data = prepared("stsb")
    batch = task.collate([data.train[i] for i in range(4)], tokenizer)
    torch.manual_seed(0)
    model = hfmtl.MultiTaskModel.from_encoder(tiny_encoder_dir, {"stsb": task.head_spec()}).eval()
    with torch.no_grad():
        out = model(task="stsb", **batch)
    scores, labels = out.logits[:, 0].tolist(), batch["labels"].tolist()
    assert out.logits.shape == (4, 1) and batch["labels"].shape == (4,)
    assert labels == pytest.approx([row["label"] for row in read_jsonl(TASK_CONFIGS["stsb"]["data_files"]["train"], 4)])
    assert out.loss.item() == pytest.approx(sum((s - y) ** 2 for s, y in zip(scores, labels)) / 4, rel=1e-5)
    assert task.eval_outputs(batch, out.logits)["predictions"].tolist() == pytest.approx(scores)


# ------------------------------------------------------------------------------------------------
# Every task type: bad data is a DataError naming the problem


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_missing_column_is_a_data_error_naming_it(task_name, tokenizer, tmp_path):
    task = make_task(task_name)
    rows = read_jsonl(task.config.data_files["train"], 4)
    for column in task.required_columns():
        path = tmp_path / f"without_{column}.jsonl"
        path.write_text("".join(json.dumps({k: v for k, v in row.items() if k != column}) + "\n" for row in rows))
        broken = make_task(task_name, data_files={"train": str(path), "validation": str(path)})
        # the message names the column and the user's split name
        with pytest.raises(DataError, match=re.escape(f"[{column!r}] not in split 'train'")):
            prepare_task_data(broken, tokenizer, MAX_LENGTH, contextlib.nullcontext)


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_empty_split_is_a_data_error(task_name, tokenizer, tmp_path):
    task = make_task(task_name, max_train_samples=4, max_eval_samples=4)
    raw = load_raw_splits(task)
    with pytest.raises(DataError, match="split 'train' is empty"):
        task.setup({"train": raw["train"].select([]), "eval": raw["eval"]})

    # the same through the data pipeline: an empty validation file
    empty = tmp_path / "validation.jsonl"
    empty.write_text("")
    files = {"train": TASK_CONFIGS[task_name]["data_files"]["train"], "validation": str(empty)}
    with pytest.raises(DataError, match=r"validation\.jsonl' is empty"):
        prepare_task_data(make_task(task_name, data_files=files), tokenizer, MAX_LENGTH, contextlib.nullcontext)


def test_empty_train_file_is_a_data_error(tokenizer, tmp_path):
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    files = {"train": str(empty), "validation": TASK_CONFIGS["rte"]["data_files"]["validation"]}
    with pytest.raises(DataError, match=r"train\.jsonl' is empty"):
        prepare_task_data(make_task("rte", data_files=files), tokenizer, MAX_LENGTH, contextlib.nullcontext)


# ------------------------------------------------------------------------------------------------
# Token classification: one label per word, on its first sub-token

NER_LABELS = TASK_CONFIGS["ner"]["label_names"]
WORDS = ["Johanson", "visited", "Wolfsburg", "yesterday", "."]
TAGS = ["B-PER", "O", "B-LOC", "O", "O"]


def ner_task(tokens: list[list[str]], tags: list[list], **overrides):
    """The conftest NER task set up on an in-memory split; returns it with its raw examples."""
    task = make_task("ner", **overrides)
    c = task.config
    examples = {c.tokens_column: tokens, c.tags_column: tags}
    task.setup({"train": datasets.Dataset.from_dict(examples)})
    return task, examples


def test_token_labels_sit_on_the_first_sub_token_of_each_word(tokenizer):
    task, examples = ner_task([WORDS], [TAGS])
    pieces = [tokenizer(word, add_special_tokens=False)["input_ids"] for word in WORDS]
    assert max(len(p) for p in pieces) > 1, "the sentence must have a word split into sub-tokens"
    first = [-100]
    every = [-100]
    for word_pieces, tag in zip(pieces, TAGS):
        first += [NER_LABELS.index(tag)] + [-100] * (len(word_pieces) - 1)
        every += [NER_LABELS.index(tag)] * len(word_pieces)
    first.append(-100)
    every.append(-100)

    features = task.preprocess(examples, tokenizer, MAX_LENGTH)

    assert task.label_names == NER_LABELS
    ids = features["input_ids"][0]
    assert ids == [tokenizer.cls_token_id, *itertools.chain(*pieces), tokenizer.sep_token_id]
    assert features["labels"][0] == first
    assert [t for t in features["labels"][0] if t != -100] == [1, 0, 5, 0, 0]  # B-PER O B-LOC O O

    # label_all_tokens: every sub-token in training; evaluation still reads the first one only
    task_all, _ = ner_task([WORDS], [TAGS], label_all_tokens=True)
    assert task_all.preprocess(examples, tokenizer, MAX_LENGTH)["labels"][0] == every
    assert task_all.preprocess_eval(examples, tokenizer, MAX_LENGTH)["labels"][0] == first
    assert task_all.config.label_all_tokens is True


def test_token_labels_on_real_conll_sentences(tokenizer, prepared):
    task, data = prepared("ner")
    rows = read_jsonl(TASK_CONFIGS["ner"]["data_files"]["train"], SAMPLES)
    for row, feature in zip(rows, data.train):
        assert len(feature["input_ids"]) < MAX_LENGTH  # no sentence of the slice is truncated
        scored = [label for label in feature["labels"] if label != -100]
        assert scored == [NER_LABELS.index(tag) for tag in row["ner_tags"]]
        assert feature["labels"][0] == feature["labels"][-1] == -100  # [CLS], [SEP]

    batch = task.collate([data.train[i] for i in range(4)], tokenizer)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


@pytest.mark.parametrize("bad_tag", ["B-FOO", len(NER_LABELS), -1])
def test_tag_outside_the_label_set_is_a_data_error(tokenizer, bad_tag):
    tags = [[*TAGS[:-1], bad_tag]]
    task, examples = ner_task([WORDS], [TAGS])  # labels resolved from the config
    examples[task.config.tags_column] = tags
    with pytest.raises(DataError, match=re.escape(repr(bad_tag))):
        task.preprocess(examples, tokenizer, MAX_LENGTH)


def test_words_and_tags_of_different_lengths_is_a_data_error(tokenizer):
    task, examples = ner_task([WORDS], [TAGS])
    examples[task.config.tags_column] = [TAGS[:-1]]
    with pytest.raises(DataError, match="5 words but 4 tags"):
        task.preprocess(examples, tokenizer, MAX_LENGTH)


# ------------------------------------------------------------------------------------------------
# Question answering: windows over long contexts, span labels, span decoding


def _gold_chars(example: dict) -> tuple[int, int]:
    """Start and end character of the first gold answer."""
    start = example["answers"]["answer_start"][0]
    return start, start + len(example["answers"]["text"][0])


def _holds_answer(offsets: list, example: dict) -> bool:
    """Whether a window's context tokens (offsets not None) cover the whole first gold answer."""
    context = [o for o in offsets if o is not None]
    start_char, end_char = _gold_chars(example)
    return context[0][0] <= start_char and end_char <= context[-1][1]


def test_qa_labels_point_at_the_gold_answer(tokenizer):
    task = make_task("squad")
    squad_rows = read_jsonl(task.config.data_files["train"], 48)
    examples = rows_to_columns(squad_rows)
    max_length = task.config.max_length
    features = task.preprocess(examples, tokenizer, max_length)
    # the eval features are the same windows, with the offsets kept (None outside the context)
    windows = task.preprocess_eval(examples, tokenizer, max_length)
    assert len(features["labels"]) == len(windows["offset_mapping"]) > len(squad_rows)
    by_id = {row["id"]: row for row in squad_rows}

    exact = 0
    for (start, end), offsets, example_id in zip(features["labels"], windows["offset_mapping"], windows["example_id"]):
        example = by_id[example_id]
        start_char, end_char = _gold_chars(example)
        context_offsets = [o for o in offsets if o is not None]
        if not _holds_answer(offsets, example):
            assert [start, end] == [0, 0]
            continue
        assert 0 < start <= end
        assert offsets[start] is not None and offsets[end] is not None
        # the label tokens are the ones that hold the answer's first and last characters...
        assert offsets[start][0] <= start_char < offsets[start][1]
        assert offsets[end][0] < end_char <= offsets[end][1]
        # ...so where the answer starts and ends on token boundaries, they decode to exactly the answer
        span = example["context"][offsets[start][0] : offsets[end][1]]
        assert example["answers"]["text"][0] in span
        on_boundaries = any(o[0] == start_char for o in context_offsets) and any(
            o[1] == end_char for o in context_offsets
        )
        if on_boundaries:
            assert span == example["answers"]["text"][0]
            exact += 1
    assert exact >= 0.8 * len(squad_rows)
    # every question has its answer in at least one window
    answered = {i for i, label in zip(windows["example_id"], features["labels"]) if label != [0, 0]}
    assert answered == set(by_id)


def test_qa_long_context_is_split_into_overlapping_windows(tokenizer):
    task = make_task("squad")
    max_length, stride = task.config.max_length, task.config.doc_stride
    example = max(read_jsonl(task.config.data_files["train"], None), key=lambda row: len(row["context"]))
    question = example["question"].lstrip()
    context_ids = tokenizer(example["context"], add_special_tokens=False)["input_ids"]
    capacity = max_length - len(tokenizer(question, add_special_tokens=False)["input_ids"]) - 3  # CLS SEP SEP
    expected_windows = 1 + math.ceil(max(0, len(context_ids) - capacity) / (capacity - stride))
    assert expected_windows >= 3

    examples = rows_to_columns([example])
    features = task.preprocess(examples, tokenizer, max_length)
    windows = task.preprocess_eval(examples, tokenizer, max_length)

    assert len(features["input_ids"]) == expected_windows
    contexts = [
        [token for token, o in zip(ids, offsets) if o is not None]
        for ids, offsets in zip(windows["input_ids"], windows["offset_mapping"])
    ]
    for ids in features["input_ids"]:
        assert len(ids) <= max_length
    for left, right in itertools.pairwise(contexts):
        assert left[-stride:] == right[:stride]  # doc_stride tokens shared by consecutive windows
    assert list(itertools.chain(contexts[0], *(c[stride:] for c in contexts[1:]))) == context_ids

    holds_answer = [_holds_answer(offsets, example) for offsets in windows["offset_mapping"]]
    assert any(holds_answer) and not all(holds_answer)
    for label, has_answer in zip(features["labels"], holds_answer):
        assert (label != [0, 0]) == has_answer  # a window without the answer points at [CLS]


def test_qa_question_too_long_for_its_window_is_a_data_error(tokenizer):
    task = make_task("squad")  # max_length 128, doc_stride 48: a question may take at most 128 - 3 - 49 tokens
    example = read_jsonl(task.config.data_files["train"], 1)[0]
    example["question"] = " ".join(["why"] * 80) + "?"
    with pytest.raises(DataError, match="question"):
        task.preprocess(rows_to_columns([example]), tokenizer, task.config.max_length)


def test_qa_decode_of_logits_peaking_at_the_gold_span(prepared):
    task, data = prepared("squad")
    features, examples = data.eval_features, data.eval_examples
    offsets_all, example_ids = features["offset_mapping"], features["example_id"]
    width = max(len(ids) for ids in features["input_ids"])
    rng = np.random.default_rng(0)
    start_logits = rng.normal(size=(len(features), width)).astype(np.float32)
    end_logits = rng.normal(size=(len(features), width)).astype(np.float32)
    # a higher peak on [CLS] and a question token: spans may start and end in the context only
    start_logits[:, :2] = 50.0
    end_logits[:, :2] = 50.0

    golden = []  # examples whose first gold answer starts and ends on token boundaries of some window
    for index, example in enumerate(examples):
        start_char, end_char = _gold_chars(example)
        for feature_index, (offsets, example_id) in enumerate(zip(offsets_all, example_ids)):
            if example_id != example["id"]:
                continue
            starts = [k for k, o in enumerate(offsets) if o is not None and o[0] == start_char]
            ends = [k for k, o in enumerate(offsets) if o is not None and o[1] == end_char]
            if starts and ends:
                start_logits[feature_index, starts[0]] = end_logits[feature_index, ends[0]] = 10.0
                golden.append(index)
                break
    assert len(golden) >= 0.75 * len(examples)
    golden_examples = examples.select(golden)
    # two eval batches, the second one narrower, as evaluate_tasks would gather them
    outputs = [
        {"start_logits": start_logits[:8], "end_logits": end_logits[:8]},
        {"start_logits": start_logits[8:], "end_logits": end_logits[8:]},
    ]

    answers = task.decode(outputs, features, golden_examples)

    for example in golden_examples:
        assert answers[example["id"]]["text"] == example["answers"]["text"][0]
        assert answers[example["id"]]["answer_start"] == example["answers"]["answer_start"][0]
    assert task.compute_metrics(outputs, features, golden_examples) == {"exact_match": 1.0, "f1": 1.0}


# ------------------------------------------------------------------------------------------------
# Multiple choice: a varying number of choices, padded and masked


def test_multiple_choice_pads_choices_and_masks_them(tiny_encoder_dir, tokenizer):
    task = make_task("copa")
    c = task.config
    examples = {
        c.context_column: ["The man turned on the faucet.", "The girl found a bug in her cereal."],
        c.question_column: ["effect", "effect"],
        c.choices_column: [
            ["The toilet filled with water.", "Water flowed from the spout."],
            ["She poured milk in the bowl.", "She lost her appetite.", "She ate it all very quickly."],
        ],
        c.label_column: [1, 2],
    }
    features = feature_rows(task.preprocess(examples, tokenizer, MAX_LENGTH))
    assert [len(f["input_ids"]) for f in features] == [2, 3]

    batch = task.collate(features, tokenizer)

    assert batch["input_ids"].shape[:2] == (2, 3)
    assert batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["choice_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["labels"].tolist() == [1, 2]
    for i, feature in enumerate(features):
        for j, ids in enumerate(feature["input_ids"]):
            assert batch["input_ids"][i, j, : len(ids)].tolist() == ids
            assert batch["attention_mask"][i, j].sum().item() == len(ids)

    torch.manual_seed(0)
    model = hfmtl.MultiTaskModel.from_encoder(tiny_encoder_dir, {"copa": task.head_spec()}).eval()
    with torch.no_grad():
        out = model(task="copa", **batch)
        alone = model(task="copa", **task.collate(features[:1], tokenizer)).logits

    assert out.logits.shape == (2, 3)
    assert out.logits[0, 2].item() == torch.finfo(out.logits.dtype).min
    assert torch.isfinite(out.logits[batch["choice_mask"]]).all()
    probabilities = out.logits.softmax(dim=-1)
    assert probabilities[0, 2].item() < 1e-30
    assert torch.allclose(probabilities.sum(dim=-1), torch.ones(2))
    assert torch.isfinite(out.loss)
    # padding the batch to 3 choices leaves the real choices' scores as they were
    assert alone.shape == (1, 2)
    assert torch.allclose(out.logits[0, :2], alone[0], atol=1e-5)


def test_multiple_choice_label_outside_the_choices_is_a_data_error(tokenizer):
    task = make_task("copa")
    c = task.config
    examples = {
        c.context_column: ["p"],
        c.question_column: ["cause"],
        c.choices_column: [["a", "b"]],
        c.label_column: [2],
    }
    with pytest.raises(DataError, match="label 2 is not an index into the 2 choices"):
        task.preprocess(examples, tokenizer, MAX_LENGTH)


# ------------------------------------------------------------------------------------------------
# Classification: label mapping and multi-label


def rte_task(labels: list, **overrides):
    task = make_task("rte", **overrides)
    c = task.config
    n = len(labels)
    examples = {
        c.text_column: ["A man sleeps."] * n,
        c.text_pair_column: ["Someone rests."] * n,
        c.label_column: labels,
    }
    task.setup({"train": datasets.Dataset.from_dict(examples)})
    return task, examples


def test_string_labels_map_through_label_names(tokenizer):
    # names in the reverse of conftest's order: ids follow the config, not the data or the alphabet
    task, examples = rte_task(
        ["entailment", "not_entailment", "entailment"], label_names=["not_entailment", "entailment"]
    )
    assert task.preprocess(examples, tokenizer, MAX_LENGTH)["labels"] == [1, 0, 1]
    assert task.head_spec()["id2label"] == {0: "not_entailment", 1: "entailment"}

    task, examples = rte_task([1, 0, 1])  # integer ids inside the label set are kept
    assert task.preprocess(examples, tokenizer, MAX_LENGTH)["labels"] == [1, 0, 1]


@pytest.mark.parametrize("bad_label", [2, -1, "neutral"])
def test_label_outside_the_label_set_is_a_data_error(tokenizer, bad_label):
    task, examples = rte_task([0, 1])
    examples[task.config.label_column] = [0, bad_label]
    with pytest.raises(DataError, match=re.escape(f"label {bad_label!r}")):
        task.preprocess(examples, tokenizer, MAX_LENGTH)


MULTI_LABEL_ROWS = [
    ("The striker scored twice in the final.", ["sport"]),
    ("Parliament passed the budget on Tuesday.", ["politics"]),
    ("The new phone has a faster chip.", ["tech"]),
    ("The minister opened a new stadium.", ["politics", "sport"]),
    ("Hackers attacked the election office.", ["politics", "tech"]),
    ("Players now wear sensors that track every step.", ["sport", "tech"]),
    ("The government funds robots for the national team.", ["politics", "sport", "tech"]),
    ("It rained all afternoon.", []),
]


def test_multi_label_classification_trains_with_bce_and_predicts_multi_hot(
    tiny_encoder_dir, tokenizer, tmp_path, accelerator
):
    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps({"text": t, "topics": labels}) + "\n" for t, labels in MULTI_LABEL_ROWS))
    config = {
        "type": "classification",
        "data_files": {"train": str(path), "validation": str(path)},
        "text_column": "text",
        "label_column": "topics",
        "multi_label": True,
    }
    task = hfmtl.build_task("topics", task_config_from_dict("topics", config))
    data = prepare_task_data(task, tokenizer, MAX_LENGTH, contextlib.nullcontext)

    assert task.label_names == ["politics", "sport", "tech"]  # from the strings seen, sorted
    assert task.head_spec()["problem_type"] == "multi_label_classification"
    names = task.label_names
    expected_hot = [[float(n in labels) for n in names] for _, labels in MULTI_LABEL_ROWS]
    assert data.train["labels"] == expected_hot

    batches = [task.collate([data.train[i] for i in range(s, s + 4)], tokenizer) for s in (0, 4)]
    assert batches[0]["labels"].dtype == torch.float32 and batches[0]["labels"].shape == (4, 3)
    torch.manual_seed(0)
    model = hfmtl.MultiTaskModel.from_encoder(tiny_encoder_dir, {"topics": task.head_spec()}).eval()
    with torch.no_grad():
        out = model(task="topics", **batches[0])
    assert out.logits.shape == (4, 3)
    bce = F.binary_cross_entropy_with_logits(out.logits, batches[0]["labels"])
    assert torch.allclose(out.loss, bce)

    before, after = overfit(model, "topics", batches, passes=30)
    assert after < 0.7 * before, (before, after)

    # evaluated on its own training rows: the metrics are those of the multi-hot predictions
    loader = build_eval_loader(task, data.eval_features, tokenizer, batch_size=4)
    model.eval()
    with torch.no_grad():
        batch_logits = [(batch, model(task="topics", **batch).logits) for batch in loader]
    predicted = torch.cat([task.eval_outputs(batch, logits)["predictions"] for batch, logits in batch_logits])
    logits = torch.cat([logits for _, logits in batch_logits])
    assert predicted.shape == (len(MULTI_LABEL_ROWS), 3)
    assert torch.equal(predicted, (logits > 0).long())  # multi-hot: one sigmoid > 0.5 decision per label
    gold = torch.tensor(expected_hot).long()
    true_pos = int((predicted & gold).sum())
    wrong = int((predicted != gold).sum())  # false positives + false negatives
    expected = {
        "eval/topics/accuracy": (predicted == gold).all(dim=1).float().mean().item(),  # exact set match
        "eval/topics/f1": 2 * true_pos / (2 * true_pos + wrong),  # micro F1 over all (row, label) cells
    }
    expected["eval/mean"] = expected["eval/topics/accuracy"]

    results = evaluate_tasks(model, {"topics": task}, {"topics": data}, {"topics": loader}, accelerator)

    assert results.keys() == expected.keys()
    for key, value in expected.items():
        assert results[key] == pytest.approx(value), key
    assert results["eval/topics/f1"] > 0
