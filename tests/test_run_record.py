"""The run record (metrics.json) and the atomic writes every file of a run goes through."""

from __future__ import annotations

import json

import pytest

from hfmtl.errors import HfmtlError
from hfmtl.files import atomic_path, replace_directory, write_json_atomic
from hfmtl.run_record import RunRecord, write_stages_summary

HISTORY = [
    {"step": 5, "epoch": 0.5, "eval/rte/accuracy": 0.6, "eval/mean": 0.6},
    {"step": 10, "epoch": 1.0, "eval/rte/accuracy": 0.55, "eval/mean": 0.55},
]


def test_a_record_round_trips_and_knows_what_was_saved(tmp_path):
    record = RunRecord(history=HISTORY, best_step=5, best_value=0.6, main_metrics={"rte": "accuracy"})
    record.greater_is_better = {"eval/rte/accuracy": True, "eval/mean": True}
    record.write(tmp_path)
    again = RunRecord.read(tmp_path)
    assert again == record and not again.finished
    assert again.saved_evaluation(load_best_model_at_end=True) == HISTORY[0]
    assert again.saved_evaluation(load_best_model_at_end=False) == HISTORY[1]
    again.train = {"steps": 10}
    again.write(tmp_path)
    assert RunRecord.read(tmp_path).finished


def test_a_record_is_finished_only_once_its_finishing_is_dropped(tmp_path):
    """The end of a run writes the record twice: with `train` and `finishing` (the side jobs still to run),
    then without `finishing`. metrics.json is the same both times: `finishing` lives in a hidden file, so
    that a Hub push among the side jobs uploads the final metrics.json."""
    record = RunRecord(history=HISTORY, best_step=5, best_value=0.6, train={"steps": 10}, run_id="r1")
    record.finishing = True
    record.write(tmp_path)
    during = (tmp_path / "metrics.json").read_bytes()
    again = RunRecord.read(tmp_path)
    assert again.trained and again.finishing and not again.finished and again.run_id == "r1"
    record.finishing = False
    record.write(tmp_path)
    assert RunRecord.read(tmp_path).finished and (tmp_path / "metrics.json").read_bytes() == during
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_records_of_older_runs_read_the_same():
    old = {"history": HISTORY, "best": {"step": 5, "eval/mean": 0.6}, "main_metrics": {"rte": "accuracy"}}
    record = RunRecord.from_dict(old)
    assert (record.best_step, record.best_metric, record.best_value) == (5, "eval/mean", 0.6)
    assert record.greater_is_better == {} and record.train is None


def test_no_record_a_broken_one_and_a_staged_root(tmp_path):
    assert RunRecord.read(tmp_path) is None
    (tmp_path / "metrics.json").write_text('{"history": [')  # a write cut short
    with pytest.raises(HfmtlError, match="metrics.json is not valid JSON"):
        RunRecord.read(tmp_path)
    stage = tmp_path / "target"
    stage.mkdir()
    RunRecord(history=HISTORY, best_step=5, best_value=0.6, train={"steps": 10}).write(stage)
    summary = write_stages_summary(tmp_path, {"target": stage})
    assert summary["final_model"] == str(stage) and summary["stages"]["target"]["train"] == {"steps": 10}
    with pytest.raises(HfmtlError, match=f"root of a staged run; use its final model: {stage}"):
        RunRecord.read(tmp_path)


def test_json_has_no_nan_tokens_and_a_failed_write_leaves_the_old_file(tmp_path):
    import numpy as np

    path = tmp_path / "data.json"
    write_json_atomic(path, {"pearson": float("nan"), "values": np.array([1.5, np.inf])})
    assert json.loads(path.read_text()) == {"pearson": None, "values": [1.5, None]}
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text())["pearson"] is None and not list(tmp_path.glob("*.tmp"))


def test_replace_directory_swaps_a_whole_directory(tmp_path):
    final, tmp = tmp_path / "best", tmp_path / "best.tmp"
    final.mkdir()
    (final / "model.safetensors").write_text("old")
    tmp.mkdir()
    (tmp / "model.safetensors").write_text("new")
    replace_directory(tmp, final)
    assert (final / "model.safetensors").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["best"]
