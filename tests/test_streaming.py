"""Streaming tasks (hfmtl/training/streaming.py): a train split read as a `datasets.IterableDataset`,
tokenized on the fly, mixed with in-memory tasks; the sizes it needs declared; an exact resume mid-stream."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from conftest import DATA, TASK_CONFIGS, CrashAt, make_config, reset_accelerate_state, run_recipe, write_config
from safetensors.torch import load_file

from hfmtl import build_task, load_config
from hfmtl.errors import ConfigError
from hfmtl.training.callbacks import TrainerCallback
from hfmtl.training.checkpointing import latest_checkpoint
from hfmtl.training.data import load_tokenizer, prepare_task_data

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

STREAMED_RTE = {**TASK_CONFIGS["rte"], "streaming": True}
MIXED = {"rte": STREAMED_RTE, "stsb": TASK_CONFIGS["stsb"]}


def _config(encoder, out, tasks=MIXED, sampling=None, **train) -> dict:
    config = make_config(encoder, out, tasks, **train)
    config["sampling"] = sampling or {"strategy": "uniform"}
    return config


class RecordBatches(TrainerCallback):
    """Keeps every batch `task_name` gave, and the task of every step."""

    def __init__(self, task_name: str):
        self.task_name, self.batches, self.drawn = task_name, [], []

    def on_train_begin(self, trainer):
        take = trainer.batches.next

        def recording(name):
            batch = take(name)
            if name == self.task_name:
                self.batches.append({k: v.clone() for k, v in batch.items()})
            return batch

        trainer.batches.next = recording

    def on_step_end(self, trainer, step, task_names):
        self.drawn.extend(task_names)


@pytest.mark.parametrize(
    ("sampling", "train", "tasks", "message"),
    [
        (
            {},
            {},
            MIXED,
            "sampling.strategy='proportional' needs every task's size and streaming task 'rte' has none: "
            "set tasks.rte.num_train_examples, or sampling.strategy to weights, uniform or round_robin",
        ),
        ({"strategy": "temperature"}, {}, MIXED, "sampling.strategy='temperature' needs every task's size"),
        (
            {"strategy": "uniform"},
            {"max_steps": None, "num_train_epochs": 1},
            MIXED,
            "train.num_train_epochs needs every task's size and streaming task 'rte' has none: set train.max_steps, "
            "or tasks.rte.num_train_examples",
        ),
        (
            {"strategy": "uniform"},
            {"dataloader_num_workers": 2},
            MIXED,
            "task 'rte' is streamed in the training process, whose stream position is checkpointed: set "
            "train.dataloader_num_workers=0",
        ),
        (
            {"strategy": "uniform"},
            {},
            {"rte": {**TASK_CONFIGS["rte"], "num_train_examples": 10}},
            "tasks.rte.num_train_examples applies to a streaming task (streaming: true); drop it",
        ),
    ],
)
def test_what_needs_a_streams_size_is_refused_without_it(tmp_path, capsys, sampling, train, tasks, message):
    config = make_config("unused-encoder", tmp_path / "out", tasks, **train)
    config["sampling"] = sampling
    path = write_config(tmp_path / "c.yaml", config)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError):  # refused by the recipe before anything is loaded or written
        run_recipe(path)
    assert not (tmp_path / "out").exists()


def test_a_streaming_task_trains_in_file_order_and_evaluates(tiny_encoder_dir, tmp_path):
    """16 rows at batch size 8: two batches per pass; every pass reads the file from its first row, and
    each batch equals the in-memory task's features of the same rows, collated."""
    out = tmp_path / "out"
    tasks = {"rte": {**STREAMED_RTE, "max_train_samples": 16}, "stsb": TASK_CONFIGS["stsb"]}
    recorder = RecordBatches("rte")
    config = _config(tiny_encoder_dir, out, tasks, max_steps=10, eval_steps=5)
    trainer = run_recipe(write_config(tmp_path / "c.yaml", config), callbacks=[recorder])

    assert isinstance(trainer.data["rte"].train, datasets.IterableDataset)
    assert isinstance(trainer.data["rte"].eval_features, datasets.Dataset)  # evaluated in memory
    used = recorder.drawn.count("rte")
    assert 2 < used < 10 and len(recorder.batches) == used  # it trained, past the end of a pass
    position = trainer.state.positions["rte"]
    assert (position["epoch"], position["batches"]) == ((used - 1) // 2, (used - 1) % 2 + 1)
    assert position["stream"]["epoch"] == position["epoch"]

    in_memory = build_task(
        "rte",
        load_config(
            write_config(
                tmp_path / "m.yaml",
                _config(tiny_encoder_dir, tmp_path / "m", {"rte": {**TASK_CONFIGS["rte"], "max_train_samples": 16}}),
            )
        ).tasks["rte"],
    )
    tokenizer = load_tokenizer(trainer.config.model)
    rows = prepare_task_data(in_memory, tokenizer, 64, trainer.accelerator.main_process_first).train
    for i, batch in enumerate(recorder.batches):
        first = (i % 2) * 8
        expected = in_memory.collate([rows[j] for j in range(first, first + 8)], tokenizer)
        assert batch.keys() == expected.keys()
        assert all(torch.equal(batch[k], expected[k]) for k in batch), f"batch {i}"

    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [e["step"] for e in history] == [5, 10]
    assert all("eval/rte/accuracy" in e and "epoch" not in e for e in history)  # no epochs: size unknown
    log = (out / "train.log").read_text()
    assert "task rte (classification): streamed train / 32 eval features" in log
    assert "task rte is streamed: its batches come in stream order" in log
    assert "Training 10 steps (no epochs: a stream's size is unknown)" in log
    card = (out / "README.md").read_text()
    assert "first 16 train examples, first 32 eval examples; train split streamed (size not known)" in card


def test_a_declared_size_gives_proportional_sampling_and_epochs(tiny_encoder_dir, tmp_path):
    out = tmp_path / "out"
    tasks = {"rte": {**STREAMED_RTE, "num_train_examples": 48}, "stsb": TASK_CONFIGS["stsb"]}
    config = _config(tiny_encoder_dir, out, tasks, {"strategy": "proportional"}, max_steps=None, num_train_epochs=1)
    trainer = run_recipe(write_config(tmp_path / "c.yaml", config))

    assert trainer.sampler.probabilities() == pytest.approx({"rte": 48 / 112, "stsb": 64 / 112})
    assert trainer.steps_per_epoch == trainer.total_steps == 48 // 8 + 64 // 8
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [(e["step"], e["epoch"]) for e in history] == [(14, 1.0)]
    assert "train split streamed (48 examples, as declared)" in (out / "README.md").read_text()


def test_a_run_killed_mid_stream_resumes_to_the_same_weights(tiny_encoder_dir, tmp_path):
    """A streaming task and an in-memory one, killed after a checkpoint taken mid-pass of the stream and
    resumed with 'latest': bit for bit the uninterrupted run's weights and evaluations."""
    tasks = {"rte": {**STREAMED_RTE, "max_train_samples": 32}, "stsb": TASK_CONFIGS["stsb"]}
    common = {"max_steps": 14, "save_steps": 5, "eval_steps": 7, "load_best_model_at_end": False}
    straight = tmp_path / "straight"
    run_recipe(write_config(tmp_path / "a.yaml", _config(tiny_encoder_dir, straight, tasks, **common)))

    reset_accelerate_state()
    resumed = tmp_path / "resumed"
    path = write_config(tmp_path / "b.yaml", _config(tiny_encoder_dir, resumed, tasks, **common))
    with pytest.raises(KeyboardInterrupt):
        run_recipe(path, callbacks=[CrashAt(9)])  # dies after checkpoint-5
    checkpoint = latest_checkpoint(resumed)
    assert checkpoint.name == "checkpoint-5"
    saved = torch.load(checkpoint / "custom_checkpoint_1.pkl", weights_only=False)["positions"]["rte"]
    assert 0 < saved["batches"] < 4 and saved["stream"] is not None  # mid-pass: the stream's state matters
    reset_accelerate_state()
    recorder = RecordBatches("rte")
    run_recipe(path, "train.resume_from_checkpoint=latest", callbacks=[recorder])
    assert recorder.drawn.count("rte") > 4 - saved["batches"]  # the resumed run read past the pass's end

    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    history_a = json.loads((straight / "metrics.json").read_text())["history"]
    history_b = json.loads((resumed / "metrics.json").read_text())["history"]
    assert history_a == history_b and [e["step"] for e in history_a] == [7, 14]


DDP_WORKER = """
import hashlib, json, os, runpy, sys
from pathlib import Path

import torch

from hfmtl.training.callbacks import TrainerCallback


class Record(TrainerCallback):
    def __init__(self):
        self.rte = []

    def on_train_begin(self, trainer):
        take = trainer.batches.next

        def recording(name):
            batch = take(name)
            if name == "rte":
                self.rte.append(batch["input_ids"].tolist())
            return batch

        trainer.batches.next = recording

    def on_step_begin(self, trainer, step, task_names):
        if step == int(os.environ.get("CRASH_AT", "0")):
            self.write(trainer, step)
            raise KeyboardInterrupt("simulated crash")

    def write(self, trainer, step):
        acc = trainer.accelerator
        digest = hashlib.sha256()
        for name, param in sorted(acc.unwrap_model(trainer.model).state_dict().items()):
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
        record = {"params": digest.hexdigest(), "rte": self.rte, "positions": trainer.state.positions}
        out = Path(trainer.args.output_dir) / f"rank{acc.process_index}-{os.environ.get('CRASH_AT', 'end')}.json"
        out.write_text(json.dumps(record))


recorder = Record()
recipe = runpy.run_path(sys.argv[1], run_name="recipe")
trainer = recipe["run"](recipe["parse_args"](sys.argv[2:]), callbacks=[recorder])
recorder.write(trainer, trainer.state.global_step)
"""


def _launch(tmp_path, config_path, *overrides, crash_at: int | None = None):
    from launching import RECIPE, accelerate_launch

    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    script = [worker, RECIPE, "--cpu", "--config", config_path, *overrides]
    return accelerate_launch(script, multi_gpu=True, env={"CRASH_AT": str(crash_at)} if crash_at else None)


@pytest.mark.slow
def test_two_processes_read_their_own_files_of_a_stream_and_resume_mid_stream(tiny_encoder_dir, tmp_path):
    """Under gloo DDP, a stream of two files gives each process one (split_dataset_by_node): process 0
    reads 40 rows (5 batches a pass), process 1 reads 16 (2 a pass), so their positions differ. A
    checkpoint holds each process's own, and a two-process run killed after it resumes to the
    uninterrupted run's weights and evaluations."""
    lines = (DATA / "rte" / "train.jsonl").read_text().splitlines()
    parts = {"a": lines[:40], "b": lines[40:56]}
    for name, part in parts.items():
        (tmp_path / f"{name}.jsonl").write_text("\n".join(part) + "\n")
    files = {
        "train": [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")],
        "validation": str(DATA / "rte" / "validation.jsonl"),
    }
    tasks = {"rte": {**STREAMED_RTE, "data_files": files, "max_train_samples": None}, "stsb": TASK_CONFIGS["stsb"]}
    common = {"max_steps": 10, "save_steps": 5, "eval_steps": 5, "load_best_model_at_end": False}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    turns = {"strategy": "round_robin"}  # rte at steps 1, 3, 5 (before checkpoint-5), 7 and 9 (after it)
    a = write_config(tmp_path / "a.yaml", _config(tiny_encoder_dir, straight, tasks, turns, **common))
    proc = _launch(tmp_path, a)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((straight / f"rank{r}-end.json").read_text()) for r in (0, 1)]
    assert ranks[0]["params"] == ranks[1]["params"]

    # every process's batches are its own file's rows, in order, pass after pass
    tokenizer = load_tokenizer(load_config(a).model)
    for rank, (name, per_pass) in enumerate([("a", 5), ("b", 2)]):
        one_file = {"rte": {**TASK_CONFIGS["rte"], "data_files": {**files, "train": str(tmp_path / f"{name}.jsonl")}}}
        config = _config(tiny_encoder_dir, tmp_path / name, one_file)
        config["tasks"]["rte"]["max_train_samples"] = None
        task = build_task("rte", load_config(write_config(tmp_path / f"{name}.yaml", config)).tasks["rte"])
        rows = prepare_task_data(task, tokenizer, 64, _no_wait).train
        assert len(rows) == len(parts[name])
        batches = ranks[rank]["rte"]
        assert batches, f"process {rank} drew no rte batch"
        for i, input_ids in enumerate(batches):
            first = (i % per_pass) * 8
            expected = task.collate([rows[j] for j in range(first, first + 8)], tokenizer)["input_ids"]
            assert input_ids == expected.tolist(), f"process {rank}, batch {i}"

    b = write_config(tmp_path / "b.yaml", _config(tiny_encoder_dir, resumed, tasks, turns, **common))
    crashed = _launch(tmp_path, b, crash_at=8)
    assert crashed.returncode != 0 and latest_checkpoint(resumed).name == "checkpoint-5"
    saved = torch.load(latest_checkpoint(resumed) / "custom_checkpoint_1.pkl", weights_only=False)
    by_process = saved["positions"]["rte"]["processes"]
    assert all(p["stream"] is not None for p in by_process)
    assert [(p["epoch"], p["batches"]) for p in by_process] == [(0, 3), (1, 1)]  # 3 batches: 3 of 5, 1 of 2
    proc = _launch(tmp_path, b, "train.resume_from_checkpoint=latest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = [json.loads((resumed / f"rank{r}-end.json").read_text()) for r in (0, 1)]
    for rank in (0, 1):  # each process went on in its own part where it stood: the straight run's batches
        assert after[rank]["rte"] == ranks[rank]["rte"][3:] and len(after[rank]["rte"]) == 2
    assert after[0]["params"] == after[1]["params"] == ranks[0]["params"]
    history_a = json.loads((straight / "metrics.json").read_text())["history"]
    assert json.loads((resumed / "metrics.json").read_text())["history"] == history_a


def _no_wait():
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("null", "line 4 (split 'train', row 3): column 'sentence1' is null; every row needs a text"),
        ("unparsable", "line 3: not valid JSON"),
    ],
)
def test_a_bad_row_at_the_start_of_a_stream_is_named_before_training(tiny_encoder_dir, tmp_path, problem, message):
    from transformers import AutoTokenizer

    from hfmtl.errors import DataError
    from hfmtl.tasks.registry import task_config_from_dict

    lines = (DATA / "rte" / "train.jsonl").read_text().splitlines()[:20]
    row = json.loads(lines[3])
    row["sentence1"] = None
    bad = lines[:3] + [json.dumps(row)] + lines[4:] if problem == "null" else lines[:2] + ['{"idx": 2,'] + lines[3:]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(bad) + "\n")
    files = {"train": str(path), "validation": str(DATA / "rte" / "validation.jsonl")}
    task = build_task("rte", task_config_from_dict("rte", {**STREAMED_RTE, "data_files": files}))
    with pytest.raises(DataError) as caught:
        prepare_task_data(task, AutoTokenizer.from_pretrained(tiny_encoder_dir), 64, _no_wait)
    assert str(caught.value).startswith(f"task 'rte': {str(path)!r} {message}")  # the file's own line
    assert "\n" not in str(caught.value)


def test_a_bad_row_met_in_training_is_named_by_its_file_and_line(tiny_encoder_dir, tmp_path, monkeypatch):
    """Past the checked head (lowered to 10 rows here), a row the task cannot preprocess stops the run
    when the loader reaches it: one line naming the file and line, not a traceback from the tokenizer."""
    from hfmtl.errors import BadRowError
    from hfmtl.training import streaming

    monkeypatch.setattr(streaming, "CHECK_ROWS", 10)
    lines = (DATA / "rte" / "train.jsonl").read_text().splitlines()[:40]
    row = json.loads(lines[13])
    row["sentence1"] = None
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join([*lines[:13], json.dumps(row), *lines[14:]]) + "\n")
    files = {"train": str(path), "validation": str(DATA / "rte" / "validation.jsonl")}
    tasks = {"rte": {**STREAMED_RTE, "data_files": files}}
    out = tmp_path / "out"
    with pytest.raises(BadRowError) as caught:
        run_recipe(write_config(tmp_path / "c.yaml", _config(tiny_encoder_dir, out, tasks, max_steps=4)))
    message = str(caught.value)
    assert message.startswith(f"task 'rte': {str(path)!r} line 14 (split 'train', row 13): cannot be preprocessed (")
    assert "\n" not in message
