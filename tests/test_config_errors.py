"""Errors of a config that name the fix: an unknown key lists its section's keys (once prefixed), a
task whose data has no evaluation split says how to name one or to turn evaluation off."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
from conftest import TASK_CONFIGS, data_files

from hfmtl.config import ModelConfig, TrainConfig, config_from_dict
from hfmtl.errors import ConfigError, DataError
from hfmtl.tasks import build_task, task_config_from_dict
from hfmtl.tasks.classification import ClassificationConfig
from hfmtl.training.data import load_raw_splits


def _data(tmp_path: Path) -> dict:
    return {
        "model": {"name_or_path": "/models/tiny-encoder"},
        "tasks": {"rte": copy.deepcopy(TASK_CONFIGS["rte"])},
        "train": {"output_dir": str(tmp_path / "out")},
    }


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert "\n" not in message, f"a config error must be one line: {message!r}"
    return message


def _keys(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def test_an_unknown_task_key_is_named_once_with_the_keys_of_its_type(tmp_path: Path) -> None:
    # was: "tasks.rte.unknown key tasks.rte.zzz" (the task prefix doubled)
    data = _data(tmp_path)
    data["tasks"]["rte"]["zzz"] = 1
    assert _error(data) == f"tasks.rte.zzz is not a key of tasks.rte; its keys are {_keys(ClassificationConfig)}"


def test_an_unknown_task_key_with_a_close_match_suggests_it(tmp_path: Path) -> None:
    data = _data(tmp_path)
    data["tasks"]["rte"]["label_colum"] = "y"
    assert _error(data) == "tasks.rte.label_colum is not a key of tasks.rte; did you mean 'label_column'?"


@pytest.mark.parametrize(("section", "cls"), [("train", TrainConfig), ("model", ModelConfig)])
def test_an_unknown_key_without_a_close_match_lists_the_section_keys(tmp_path: Path, section: str, cls: type) -> None:
    data = _data(tmp_path)
    data[section]["qqqqqqqq"] = 1
    assert _error(data) == f"{section}.qqqqqqqq is not a key of {section}; its keys are {_keys(cls)}"


def test_an_unknown_section_without_a_close_match_lists_the_sections(tmp_path: Path) -> None:
    data = _data(tmp_path)
    data["qqqqqqqq"] = {}
    assert _error(data) == (
        "unknown section 'qqqqqqqq'; the sections are model, tasks, train, sampling, peft, balancing, stages"
    )


def test_a_task_value_error_is_prefixed_once(tmp_path: Path) -> None:
    data = _data(tmp_path)
    data["tasks"]["rte"]["max_train_samples"] = 0
    assert _error(data) == "tasks.rte.max_train_samples=0 must be > 0"


@pytest.mark.parametrize(
    ("options", "fragments"),
    [
        (
            {},  # data_files has train and validation; the default eval_split is "validation"
            None,
        ),
        (
            {"data_files": {"train": data_files("rte")["train"]}},
            [
                "task 'rte': data_files has no 'validation' split (has ['train'])",
                "set tasks.rte.eval_split to one of them, or eval_split: null to train without evaluation",
            ],
        ),
        (
            {"eval_split": "dev"},
            ["data_files has no 'dev' split (has ['train', 'validation'])", "tasks.rte.eval_split", "eval_split: null"],
        ),
        (
            {"train_split": "training"},
            ["data_files has no 'training' split (has ['train', 'validation'])", "set tasks.rte.train_split"],
        ),
    ],
)
def test_a_missing_split_names_the_key_that_picks_it(options: dict, fragments: list[str] | None) -> None:
    task = build_task("rte", task_config_from_dict("rte", {**TASK_CONFIGS["rte"], **options}))
    if fragments is None:
        assert set(load_raw_splits(task)) == {"train", "eval"}
        return
    with pytest.raises(DataError) as info:
        load_raw_splits(task)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_eval_split_null_trains_without_evaluation() -> None:
    only_train = {**TASK_CONFIGS["rte"], "data_files": {"train": data_files("rte")["train"]}, "eval_split": None}
    task = build_task("rte", task_config_from_dict("rte", only_train))
    assert set(load_raw_splits(task)) == {"train"}
