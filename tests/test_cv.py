"""`hfmtl cv`: K-fold cross-validation over the tasks' train splits, run for real (tiny encoder, two
tasks on 48-row slices, 2 folds): the folds partition the rows, each fold trains outside and evaluates
on its held-out rows, the summary is numpy's mean/std over the folds, finished folds are skipped on a
resumed rerun, and bad input is a one-line error."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from conftest import TASK_CONFIGS, CrashAt, make_config, reset_accelerate_state, write_config

from hfmtl import cli
from hfmtl.config.stages import stage_is_complete
from hfmtl.errors import ConfigError
from hfmtl.training.cross_validation import assign_folds, check_num_folds, saved_evaluation
from hfmtl.training.trainer import MultiTaskTrainer

TWO_TASKS = {"rte": TASK_CONFIGS["rte"], "ner": TASK_CONFIGS["ner"]}
ROWS, FOLDS, SEED = 48, 2, 3
ROW_ID = {"rte": "idx", "ner": "id"}  # a column that names each row of the raw file


def _cv(*argv: str) -> tuple[int, str]:
    reset_accelerate_state()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["cv", *argv])
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def cv_run(tiny_encoder_dir, tmp_path_factory):
    """One 2-fold cross-validation through the CLI: (config path, output dir, printed output)."""
    tmp = tmp_path_factory.mktemp("cv")
    out = tmp / "cv-out"
    cfg = make_config(tiny_encoder_dir, tmp / "unused", TWO_TASKS, samples=ROWS, max_steps=4, save_steps=2, seed=SEED)
    path = write_config(tmp / "run.yaml", cfg)
    code, printed = _cv(str(path), "--folds", str(FOLDS), "--output", str(out))
    assert code == 0
    return path, out, printed


def _raw_rows(task_name: str) -> datasets.Dataset:
    ds = datasets.load_dataset("json", data_files=TASK_CONFIGS[task_name]["data_files"]["train"], split="train")
    return ds.select(range(ROWS))  # max_train_samples comes before the split


@pytest.mark.parametrize(("num_rows", "num_folds"), [(48, 2), (10, 3), (7, 7), (101, 5)])
def test_folds_partition_the_rows(num_rows, num_folds):
    folds = assign_folds(num_rows, num_folds, seed=0)
    assert len(folds) == num_folds
    together = np.concatenate(folds)
    assert sorted(together.tolist()) == list(range(num_rows))  # covering, and disjoint (no repeats)
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    assert all(np.array_equal(f, np.sort(f)) for f in folds)
    again = assign_folds(num_rows, num_folds, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))  # deterministic from the seed
    other = assign_folds(num_rows, num_folds, seed=1)
    assert any(not np.array_equal(a, b) for a, b in zip(folds, other))


def test_number_of_folds_is_checked():
    check_num_folds(5, {"rte": 5, "ner": 9})
    with pytest.raises(ConfigError, match="at least 2 folds"):
        check_num_folds(1, {"rte": 5})
    with pytest.raises(ConfigError, match="more than task 'rte' has train rows \\(5"):
        check_num_folds(6, {"rte": 5, "ner": 9})


def test_each_fold_trains_outside_and_evaluates_on_its_held_out_rows(cv_run):
    _, out, _ = cv_run
    for task_name, id_column in ROW_ID.items():
        raw = _raw_rows(task_name)
        ids = raw[id_column]
        held_out_seen = []
        for k, held_out in enumerate(assign_folds(ROWS, FOLDS, SEED)):
            fold_dir = out / f"fold-{k}"
            # the fold's resolved config reads exactly the fold's files, uncut
            task_cfg = yaml.safe_load((fold_dir / "config.yaml").read_text())["tasks"][task_name]
            train_file, eval_file = task_cfg["data_files"]["train"], task_cfg["data_files"]["validation"]
            assert Path(train_file).parent == fold_dir / "data" / task_name
            assert (task_cfg["max_train_samples"], task_cfg["max_eval_samples"]) == (None, None)
            train_cfg = yaml.safe_load((fold_dir / "config.yaml").read_text())["train"]
            assert (train_cfg["output_dir"], train_cfg["push_to_hub"]) == (str(fold_dir), False)
            train = datasets.load_dataset("parquet", data_files=train_file, split="train")
            evaluation = datasets.load_dataset("parquet", data_files=eval_file, split="train")
            # whole rows, every column kept, in the raw order
            assert evaluation.to_list() == raw.select(held_out.tolist()).to_list()
            kept = [i for i in range(ROWS) if i not in set(held_out.tolist())]
            assert train.to_list() == raw.select(kept).to_list()
            held_out_seen += evaluation[id_column]
        assert sorted(held_out_seen) == sorted(ids)  # the held-out folds cover the rows once each
    for k in range(FOLDS):  # and the training really used them: 24 rows to train on, 24 to evaluate
        assert "task rte (classification): 24 train / 24 eval features" in (out / f"fold-{k}" / "train.log").read_text()


def test_summary_is_the_mean_and_sample_std_over_folds(cv_run):
    _, out, printed = cv_run
    results = json.loads((out / "cv_results.json").read_text())
    assert results["folds"] == FOLDS and results["seed"] == SEED
    assert results["rows"] == {name: {"total": ROWS, "held_out": [24, 24]} for name in TWO_TASKS}
    per_fold = results["per_fold"]
    assert [f["fold"] for f in per_fold] == list(range(FOLDS))
    for k, fold in enumerate(per_fold):  # each fold's values are its saved model's evaluation
        assert {key: v for key, v in fold.items() if key != "fold"} == saved_evaluation(out / f"fold-{k}", True)
    summary = results["summary"]
    assert set(summary) == {k for k in per_fold[0] if k.startswith("eval/")}
    assert {"eval/rte/accuracy", "eval/ner/f1", "eval/mean"} <= set(summary)
    for key, stats in summary.items():
        values = np.array([f[key] for f in per_fold])
        assert stats["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert stats["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    # the printed table: one row per task and metric, mean ± std, then each fold
    rte, folds = summary["eval/rte/accuracy"], " +".join(f"{f['eval/rte/accuracy']:.4f}" for f in per_fold)
    assert re.search(rf"^rte +accuracy +{rte['mean']:.4f} ± {rte['std']:.4f} +{folds}$", printed, re.MULTILINE)
    assert re.search(r"^\(all\) +mean ", printed, re.MULTILINE)


def test_rerun_with_resume_skips_finished_folds(cv_run, monkeypatch):
    path, out, _ = cv_run
    before = json.loads((out / "cv_results.json").read_text())
    fold0 = (out / "fold-0" / "metrics.json").stat().st_mtime_ns

    # without resume (or overwrite), a non-empty output directory is refused
    code, _ = _cv(str(path), "--folds", str(FOLDS), "--output", str(out))
    assert code == 2

    code, printed = _cv(str(path), "--folds", str(FOLDS), "--output", str(out), "train.resume_from_checkpoint=latest")
    assert code == 0
    assert "Fold 0 finished in an earlier run: skipped" in printed and "Fold 1 finished" in printed
    assert json.loads((out / "cv_results.json").read_text()) == before

    # fold 1 crashes after its checkpoint at step 2; the rerun skips fold 0 and resumes fold 1 exactly
    shutil.rmtree(out / "fold-1")
    original = MultiTaskTrainer.train

    def train_until_a_crash(self):  # the CLI builds the trainer: the crash joins it as it starts
        self.add_callback(CrashAt(4))
        return original(self)

    with monkeypatch.context() as patch:
        patch.setattr(MultiTaskTrainer, "train", train_until_a_crash)
        with pytest.raises(KeyboardInterrupt):
            _cv(str(path), "--folds", str(FOLDS), "--output", str(out), "train.resume_from_checkpoint=latest")
    assert not stage_is_complete(out / "fold-1")
    code, printed = _cv(str(path), "--folds", str(FOLDS), "--output", str(out), "train.resume_from_checkpoint=latest")
    assert code == 0
    assert "Fold 0 finished" in printed and "Fold 1 finished" not in printed
    assert "Resumed from" in (out / "fold-1" / "train.log").read_text()
    assert (out / "fold-0" / "metrics.json").stat().st_mtime_ns == fold0
    assert json.loads((out / "cv_results.json").read_text()) == before


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("one fold", "--folds 1: cross-validation needs at least 2 folds"),
        ("more folds than rows", "--folds 49 is more than task 'ner' has train rows (48, after max_train_samples)"),
        ("stages", "has `stages:`; cross-validation runs one training"),
        # named in the user's file, not in a fold's copy of it
        ("a row without a label", "bad-train.jsonl' line 3 (split 'train', row 2): column 'label' is null"),
    ],
)
def test_bad_input_is_one_line(tiny_encoder_dir, tmp_path, capsys, case, expected):
    out = tmp_path / "out"
    tasks = {"rte": TASK_CONFIGS["rte"], "ner": TASK_CONFIGS["ner"]}
    cfg = make_config(tiny_encoder_dir, out, tasks, samples=ROWS)
    cfg["tasks"]["rte"]["max_train_samples"] = 60
    if case == "stages":
        cfg["stages"] = {"first": {"tasks": ["ner"]}, "second": {"tasks": ["rte"]}}
    if case == "a row without a label":
        lines = Path(TASK_CONFIGS["rte"]["data_files"]["train"]).read_text().splitlines()[:60]
        lines[2] = json.dumps({**json.loads(lines[2]), "label": None})
        (tmp_path / "bad-train.jsonl").write_text("\n".join(lines) + "\n")
        cfg["tasks"]["rte"]["data_files"] = {
            **TASK_CONFIGS["rte"]["data_files"],
            "train": str(tmp_path / "bad-train.jsonl"),
        }
    folds = {"one fold": "1", "more folds than rows": "49"}.get(case, "2")
    reset_accelerate_state()
    assert cli.main(["cv", str(write_config(tmp_path / "run.yaml", cfg)), "--folds", folds]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, err
    assert err.count("error: ") == 1
    assert not out.exists()
