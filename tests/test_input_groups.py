"""Input groups: tasks that read the same rows train on one encoder pass per batch (hfmtl/config/input_groups.py,
hfmtl/training/input_groups.py, hfmtl/model/shared_input.py)."""

from __future__ import annotations

import json
import logging

import datasets
import pytest
import torch
from conftest import DATA, TASK_CONFIGS, CrashAt, make_config, reset_accelerate_state, run_recipe, write_config
from safetensors.torch import load_file

from hfmtl.config import config_from_dict, load_config
from hfmtl.errors import ConfigError, DataError
from hfmtl.tasks import build_task, task_config_from_dict
from hfmtl.training.callbacks import TrainerCallback
from hfmtl.training.checkpointing import latest_checkpoint
from hfmtl.training.data import TaskData
from hfmtl.training.input_groups import InputGroup, group_rows

CONLL = {
    "type": "token_classification",
    "data_files": {split: str(DATA / "conll2003" / f"{split}.jsonl") for split in ("train", "validation")},
    "tokens_column": "tokens",
}
# NER, POS and chunk tags of the same CoNLL-2003 sentences, and RTE outside the group
GROUPED = {
    "ner": {**CONLL, "tags_column": "ner_tags", "input_group": "conll"},
    "pos": {**CONLL, "tags_column": "pos_tags", "input_group": "conll"},
    "chunk": {**CONLL, "tags_column": "chunk_tags", "input_group": "conll"},
    "rte": TASK_CONFIGS["rte"],
}


def _config(tmp_path, encoder: str, tasks=GROUPED, **train) -> dict:
    return make_config(encoder, tmp_path / "out", tasks, samples=48, eval_samples=16, **train)


# --- config checks: before any data is loaded ------------------------------------------------------


def _stsb(**extra) -> dict:
    return {**TASK_CONFIGS["stsb"], "input_group": "pairs", **extra}


@pytest.mark.parametrize(
    ("tasks", "model", "message"),
    [
        (
            {"ner": GROUPED["ner"], "rte": TASK_CONFIGS["rte"]},
            {},
            "tasks.ner.input_group='conll' names no other task: an input group needs two or more tasks",
        ),
        (
            {"conll": GROUPED["ner"], "pos": GROUPED["pos"]},
            {},
            "input group 'conll' has the name of a task",
        ),
        (
            {"a": _stsb(), "b": _stsb(data_files={"train": str(DATA / "rte" / "train.jsonl")})},
            {},
            "input group 'pairs': tasks 'a' and 'b' differ in training data files",
        ),
        (
            {"a": _stsb(), "b": _stsb(text_pair_column=None)},
            {},
            "input group 'pairs': tasks 'a' and 'b' differ in text columns",
        ),
        (
            {"a": _stsb(), "b": _stsb(max_length=32)},
            {},
            "input group 'pairs': tasks 'a' and 'b' differ in max_length (64 vs 32)",
        ),
        (
            {"a": _stsb(), "b": _stsb(batch_size=4)},
            {},
            "input group 'pairs': tasks 'a' and 'b' differ in batch_size (None vs 4)",
        ),
        (
            {"a": {**TASK_CONFIGS["copa"], "input_group": "g"}, "b": {**TASK_CONFIGS["copa"], "input_group": "g"}},
            {},
            "tasks.a.input_group='g': task 'a' is multiple choice (each row is encoded once per choice), so it "
            "cannot share an encoder pass",
        ),
        (
            {"a": {**TASK_CONFIGS["squad"], "input_group": "g"}, "b": {**TASK_CONFIGS["squad"], "input_group": "g"}},
            {},
            "task 'a' is question answering (a row becomes one feature per window of its context)",
        ),
        (
            {"a": _stsb(streaming=True), "b": _stsb(streaming=True)},
            {},
            "tasks.a.input_group='pairs': task 'a' is streamed",
        ),
        (
            {"a": _stsb(), "b": _stsb()},
            {"peft": {"mode": "per_task", "config": {"peft_type": "LORA", "r": 4, "target_modules": ["query"]}}},
            "peft.mode=per_task gives each task its own adapter in the encoder",
        ),
    ],
)
def test_a_group_that_cannot_share_rows_is_one_config_error(tasks, model, message, tiny_encoder_dir, tmp_path):
    config = _config(tmp_path, tiny_encoder_dir, tasks)
    config.update(model)
    with pytest.raises(ConfigError) as caught:
        config_from_dict(config)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_stage_with_one_task_of_a_group_trains_it_alone(tiny_encoder_dir, tmp_path):
    from hfmtl.config.stages import plan_stages

    config = _config(tmp_path, tiny_encoder_dir)
    config["stages"] = {"first": {"tasks": ["ner", "pos"]}, "second": {"tasks": ["ner", "rte"]}}
    first, second = plan_stages(config_from_dict(config))
    assert [t.input_group for t in first.config.tasks.values()] == ["conll", "conll"]
    assert [t.input_group for t in second.config.tasks.values()] == [None, None]


def test_the_conll_group_config_loads_and_the_ungrouped_one_gets_a_hint():
    from hfmtl.config.input_groups import shareable_tasks, training_units

    grouped = load_config("configs/conll_group.yaml")
    assert training_units(grouped.tasks, grouped.model.max_length) == {"conll": ["ner", "pos", "chunk"]}
    separate = load_config("configs/conll.yaml")
    assert shareable_tasks(separate.tasks, separate.model.max_length) == [["ner", "pos", "chunk"]]


# --- rows: the same rows in the same order, or one line --------------------------------------------


def _token_task(name: str, tags: str):
    config = task_config_from_dict(name, {**CONLL, "tags_column": tags, "input_group": "g"})
    return build_task(name, config)


def _features(tokenizer, task, rows: list[dict]) -> TaskData:
    raw = datasets.Dataset.from_list(rows)
    task.setup({"train": raw})
    features = raw.map(task.preprocess, batched=True, fn_kwargs={"tokenizer": tokenizer, "max_length": 32})
    return TaskData(train=features.remove_columns(raw.column_names), eval_features=None, eval_examples=None)


def test_rows_that_differ_between_the_tasks_of_a_group_are_one_data_error(tiny_encoder_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    rows = [json.loads(line) for line in (DATA / "conll2003" / "train.jsonl").open().readlines()[:6]]
    ner, pos = _token_task("ner", "ner_tags"), _token_task("pos", "pos_tags")
    group = InputGroup("g", [ner, pos])
    aligned = group_rows(group, {"ner": _features(tokenizer, ner, rows), "pos": _features(tokenizer, pos, rows)})
    assert len(aligned) == 6 and {"ner/labels", "pos/labels", "input_ids"} <= set(aligned.column_names)

    shuffled = rows[:3] + [rows[4], rows[3], rows[5]]
    with pytest.raises(DataError, match=r"^input group 'g': training row 3 of task 'pos' is not row 3 of task 'ner' "):
        group_rows(group, {"ner": _features(tokenizer, ner, rows), "pos": _features(tokenizer, pos, shuffled)})
    with pytest.raises(DataError, match=r"^input group 'g': task 'pos' has 5 training rows and task 'ner' 6"):
        group_rows(group, {"ner": _features(tokenizer, ner, rows), "pos": _features(tokenizer, pos, rows[:5])})


def test_a_group_whose_row_counts_differ_stops_before_training(tiny_encoder_dir, tmp_path):
    config = _config(tmp_path, tiny_encoder_dir)
    config["tasks"]["pos"]["max_train_samples"] = 40
    with pytest.raises(DataError, match="input group 'conll': task 'pos' has 40 training rows and task 'ner' 48"):
        run_recipe(write_config(tmp_path / "run.yaml", config))
    assert not (tmp_path / "out" / "model.safetensors").exists()


# --- the model: one encoder pass, each head's own loss ---------------------------------------------


def test_a_group_batch_gives_each_task_the_loss_it_has_alone(tiny_encoder_dir):
    from transformers import AutoTokenizer

    from hfmtl.model.modeling import MultiTaskModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    heads = {
        "a": {"type": "regression", "num_labels": 1, "problem_type": "regression"},
        "b": {"type": "classification", "num_labels": 3, "problem_type": "single_label_classification"},
    }
    model = MultiTaskModel.from_encoder(tiny_encoder_dir, heads).eval()
    inputs = dict(tokenizer(["a short one", "and a second sentence"], padding=True, return_tensors="pt"))
    labels = {"a": torch.tensor([1.0, 2.5]), "b": torch.tensor([2, 0])}
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    shared = model(**inputs, labels=labels).task_losses
    assert len(calls) == 1 and list(shared) == ["a", "b"]
    for name in labels:
        assert torch.equal(shared[name], model(task=name, **inputs, labels=labels[name]).loss)
    # in an all-tasks step a group's batch sits under the group's name, beside single tasks' batches
    grouped = model(task_batches={"g": {**inputs, "labels": labels}}).task_losses
    assert list(grouped) == ["a", "b"] and all(torch.equal(grouped[n], shared[n]) for n in labels)


# --- training -------------------------------------------------------------------------------------


class EncoderPasses(TrainerCallback):
    """Counts the encoder's forward calls within each optimizer step (evaluation left out)."""

    def __init__(self):
        self.per_step: list[tuple[list[str], int]] = []
        self._calls = 0

    def on_train_begin(self, trainer):
        trainer.unwrapped_model().encoder.register_forward_hook(lambda *_: self._count())

    def _count(self):
        self._calls += 1

    def on_step_begin(self, trainer, step, task_names):
        self._calls = 0

    def on_step_end(self, trainer, step, task_names):
        self.per_step.append((list(task_names), self._calls))


def test_a_group_trains_on_one_encoder_pass_per_step_and_logs_each_task(tiny_encoder_dir, tmp_path):
    passes = EncoderPasses()
    config = _config(tmp_path, tiny_encoder_dir, max_steps=8, logging_steps=4, eval_steps=8)
    trainer = run_recipe(write_config(tmp_path / "run.yaml", config), callbacks=[passes])
    assert trainer.units.members == {"conll": ["ner", "pos", "chunk"], "rte": ["rte"]}
    assert set(trainer.sampler.probabilities()) == {"conll", "rte"}
    assert trainer.units.sizes == {"conll": 48, "rte": 48}  # a group's rows are counted once
    steps = {tuple(names) for names, _ in passes.per_step}
    assert steps == {("ner", "pos", "chunk"), ("rte",)}
    assert all(calls == 1 for _, calls in passes.per_step)  # one encoder pass per step, group or not
    history = json.loads((tmp_path / "out" / "metrics.json").read_text())["history"]
    assert {"eval/ner/f1", "eval/pos/accuracy", "eval/chunk/f1", "eval/rte/accuracy"} <= set(history[-1])
    log = (tmp_path / "out" / "train.log").read_text()
    assert "input group conll: tasks ['ner', 'pos', 'chunk'] train on one encoder pass per batch" in log
    for name in ("ner", "pos", "chunk", "rte"):
        assert f"train/{name}/loss" in log
    # the group's batch took one step of each of its tasks' positions: one entry, for the group
    assert set(trainer.state.positions) == {"conll", "rte"}


def test_a_group_may_mix_task_types_whose_inputs_agree(tiny_encoder_dir, tmp_path):
    """STS-B's score (regression) and its genre (classification, not evaluated) on the same sentence pairs."""
    train_file = {"train": TASK_CONFIGS["stsb"]["data_files"]["train"]}
    tasks = {
        "stsb": {**TASK_CONFIGS["stsb"], "input_group": "pairs"},
        "genre": {
            **TASK_CONFIGS["stsb"],
            "type": "classification",
            "label_column": "genre",
            "data_files": train_file,
            "eval_split": None,
            "input_group": "pairs",
        },
    }
    passes = EncoderPasses()
    run_recipe(
        write_config(tmp_path / "run.yaml", _config(tmp_path, tiny_encoder_dir, tasks, max_steps=3)), callbacks=[passes]
    )
    assert passes.per_step == [(["stsb", "genre"], 1)] * 3
    log = (tmp_path / "out" / "train.log").read_text()
    assert "train/stsb/loss" in log and "train/genre/loss" in log
    history = json.loads((tmp_path / "out" / "metrics.json").read_text())["history"]
    assert "eval/stsb/pearson" in history[-1] and not any(k.startswith("eval/genre") for k in history[-1])


def test_tasks_that_could_share_rows_get_a_hint_in_the_log(tiny_encoder_dir, tmp_path, caplog):
    tasks = {name: {k: v for k, v in cfg.items() if k != "input_group"} for name, cfg in GROUPED.items()}
    config = _config(tmp_path, tiny_encoder_dir, tasks, max_steps=1)
    with caplog.at_level(logging.INFO, logger="hfmtl"):
        run_recipe(write_config(tmp_path / "run.yaml", config))
    assert "tasks ['ner', 'pos', 'chunk'] read the same rows: give them one tasks.<task>.input_group" in caplog.text


@pytest.mark.parametrize("balancing", [{"method": "uncertainty"}, {"step": "all_tasks", "method": "pcgrad"}])
def test_a_killed_grouped_run_resumes_exactly(balancing, tiny_encoder_dir, tmp_path):
    """A group trains with a loss weighting in its one-task step, or with PCGrad on every task's gradient
    from the shared pass; killed mid-run and resumed, it ends equal to a run that was never killed."""
    common = {"max_steps": 6, "save_steps": 3, "eval_steps": 6, "load_best_model_at_end": False}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    config = _config(straight, tiny_encoder_dir, **common)
    config["train"]["output_dir"], config["balancing"] = str(straight), balancing
    reset_accelerate_state()
    run_recipe(write_config(tmp_path / "a.yaml", config))
    config["train"]["output_dir"] = str(resumed)
    cfg = write_config(tmp_path / "b.yaml", config)
    reset_accelerate_state()
    with pytest.raises(KeyboardInterrupt):
        run_recipe(cfg, callbacks=[CrashAt(5)])
    assert latest_checkpoint(resumed).name == "checkpoint-3"
    reset_accelerate_state()
    run_recipe(cfg, "train.resume_from_checkpoint=latest")
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert (
        json.loads((straight / "metrics.json").read_text())["history"]
        == json.loads((resumed / "metrics.json").read_text())["history"]
    )


def test_a_cross_validation_fold_keeps_a_group_on_one_set_of_rows(tiny_encoder_dir, tmp_path):
    from hfmtl.training.cross_validation import fold_config, fold_data_files

    config = fold_config(config_from_dict(_config(tmp_path, tiny_encoder_dir)), 1, tmp_path / "cv")
    files = fold_data_files(tmp_path / "cv", 1, "ner")  # the group's first task's fold, every column kept
    assert [config.tasks[n].data_files for n in ("ner", "pos", "chunk")] == [files] * 3
    assert config.tasks["rte"].data_files == fold_data_files(tmp_path / "cv", 1, "rte")
