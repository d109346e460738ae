"""Tests of the `train:` keys named as transformers 5 names them: the renamed keys (old names still load
for one release, with a one-line warning), `warmup_steps` as a ratio or a count, and the best-model
metric (`metric_for_best_model`, `greater_is_better`).
"""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, TASK_CONFIGS

from hfmtl.config import TrainConfig, config_from_dict, load_config, save_config
from hfmtl.config.stages import plan_stages
from hfmtl.errors import ConfigError


def _data(tmp_path: Path, **train) -> dict:
    return {
        "model": {"name_or_path": "/models/tiny-encoder"},
        "tasks": {"rte": copy.deepcopy(TASK_CONFIGS["rte"]), "stsb": copy.deepcopy(TASK_CONFIGS["stsb"])},
        "train": {"output_dir": str(tmp_path / "out"), "max_steps": 10, **train},
    }


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert "\n" not in message, f"a config error must be one line: {message!r}"
    return message


def _deprecations(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hfmtl" and r.levelno == logging.WARNING]


# ------------------------------------------------------------------------------------------------
# Old names


@pytest.mark.parametrize(
    ("old", "value", "new", "expected"),
    [
        ("warmup_ratio", 0.06, "warmup_steps", 0.06),
        ("group_by_length", True, "train_sampling_strategy", "group_by_length"),
        ("group_by_length", False, "train_sampling_strategy", "random"),
        ("hub_private", True, "hub_private_repo", True),
    ],
)
def test_an_old_name_is_read_as_the_new_key_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, old: str, value, new: str, expected
) -> None:
    with caplog.at_level(logging.WARNING, logger="hfmtl"):
        config = config_from_dict(_data(tmp_path, **{old: value}))

    assert getattr(config.train, new) == expected
    assert _deprecations(caplog) == [
        f"train.{old} is deprecated (removed in the next release): write train.{new} instead "
        f"(read as train.{new}={expected!r})"
    ]
    assert old not in config.to_dict()["train"]  # a saved config.yaml has the new names only


def test_the_warning_is_one_stderr_line_before_logging_is_set_up(tmp_path: Path) -> None:
    code = (
        "from hfmtl.config import config_from_dict; "
        f"config_from_dict({{'model': {{'name_or_path': 'x'}}, 'tasks': {{'rte': {TASK_CONFIGS['rte']!r}}}, "
        f"'train': {{'output_dir': {str(tmp_path)!r}, 'group_by_length': False}}}})"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert result.stderr.splitlines() == [
        "train.group_by_length is deprecated (removed in the next release): write train.train_sampling_strategy "
        "instead (read as train.train_sampling_strategy='random')"
    ]


@pytest.mark.parametrize(
    ("train", "old", "new"),
    [
        ({"group_by_length": True, "train_sampling_strategy": "random"}, "group_by_length", "train_sampling_strategy"),
        ({"hub_private": True, "hub_private_repo": True}, "hub_private", "hub_private_repo"),
        ({"warmup_ratio": 0.1, "warmup_steps": 50}, "warmup_ratio", "warmup_steps"),
    ],
)
def test_old_and_new_name_together_is_an_error(tmp_path: Path, train: dict, old: str, new: str) -> None:
    assert _error(_data(tmp_path, **train)) == (
        f"train.{old} is the old name of train.{new} and both are set: keep only train.{new}"
    )


def test_an_invalid_old_value_names_the_old_key(tmp_path: Path) -> None:
    assert _error(_data(tmp_path, warmup_ratio=1.5)) == "train.warmup_ratio=1.5 must be in [0, 1)"
    assert _error(_data(tmp_path, group_by_length="maybe")) == "train.group_by_length='maybe' must be true or false"


@pytest.mark.parametrize(
    ("warmup_ratio", "warmup_steps", "expected"),
    [(0.06, 0, 0.06), (0.0, 50, 50.0), (0.0, 0, 0.0), (0.1, 0.1, 0.1)],
)
def test_a_config_yaml_saved_by_the_previous_release_loads(
    tmp_path: Path, warmup_ratio: float, warmup_steps: float, expected: float
) -> None:
    # The previous release saved every key: warmup_ratio beside warmup_steps, where a warmup_steps of 0
    # meant "use the ratio"; group_by_length and hub_private under their old names.
    train = {k: v for k, v in TrainConfig(output_dir=str(tmp_path)).__dict__.items()}
    for new in ("train_sampling_strategy", "hub_private_repo", "warmup_steps", "metric_for_best_model"):
        del train[new]
    del train["greater_is_better"]
    train.update(warmup_ratio=warmup_ratio, warmup_steps=warmup_steps, group_by_length=True, hub_private=False)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**_data(tmp_path), "train": train}, sort_keys=False))

    config = load_config(path)

    assert config.train.warmup_steps == expected
    assert (config.train.train_sampling_strategy, config.train.hub_private_repo) == ("group_by_length", False)
    save_config(config, tmp_path / "resaved.yaml")
    resaved = yaml.safe_load((tmp_path / "resaved.yaml").read_text())["train"]
    assert {"warmup_ratio", "group_by_length", "hub_private"}.isdisjoint(resaved)
    assert load_config(tmp_path / "resaved.yaml") == config


def test_a_stage_override_with_an_old_name_is_translated_before_the_stages_are_planned(tmp_path: Path) -> None:
    data = _data(tmp_path, warmup_steps=0.2)
    data["stages"] = {
        "first": {"tasks": ["stsb"], "train": {"warmup_ratio": 0.1}},
        "second": {"tasks": ["rte"], "train": {"group_by_length": False}},
    }
    config = config_from_dict(data)
    assert config.stages["first"].train == {"warmup_steps": 0.1}
    assert config.stages["second"].train == {"train_sampling_strategy": "random"}

    first, second = (stage.config.train for stage in plan_stages(config))
    assert (first.warmup_steps, first.train_sampling_strategy) == (0.1, "group_by_length")
    assert (second.warmup_steps, second.train_sampling_strategy) == (0.2, "random")


def test_the_default_train_sampling_strategy_groups_by_length(tmp_path: Path) -> None:
    assert config_from_dict(_data(tmp_path)).train.train_sampling_strategy == "group_by_length"


# ------------------------------------------------------------------------------------------------
# warmup_steps: a ratio below 1, a count from 1


@pytest.mark.parametrize("warmup_steps", [0, 0.06, 0.1, 0.5, 0.999, 1, 7, 40, 250, 1000])
@pytest.mark.parametrize("total_steps", [1, 30, 250, 2400])
def test_num_warmup_steps_counts_as_transformers_does(tmp_path: Path, warmup_steps: float, total_steps: int) -> None:
    from transformers import TrainingArguments

    ours = TrainConfig(output_dir=str(tmp_path), warmup_steps=warmup_steps).num_warmup_steps(total_steps)
    theirs = TrainingArguments(output_dir=str(tmp_path), warmup_steps=warmup_steps, report_to="none")
    assert ours == theirs.get_warmup_steps(total_steps)
    assert isinstance(ours, int)


def test_warmup_steps_as_a_ratio_and_as_a_count(tmp_path: Path) -> None:
    assert TrainConfig(output_dir=str(tmp_path), warmup_steps=0.1).num_warmup_steps(250) == 25
    assert TrainConfig(output_dir=str(tmp_path), warmup_steps=0.1).num_warmup_steps(251) == 26  # rounded up
    assert TrainConfig(output_dir=str(tmp_path), warmup_steps=40).num_warmup_steps(250) == 40
    assert TrainConfig(output_dir=str(tmp_path)).num_warmup_steps(250) == 0


# ------------------------------------------------------------------------------------------------
# metric_for_best_model and greater_is_better


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("eval/mean", "eval/mean"),
        ("mean", "eval/mean"),
        ("eval/rte/accuracy", "eval/rte/accuracy"),
        ("rte/accuracy", "eval/rte/accuracy"),
        ("stsb/mse", "eval/stsb/mse"),
    ],
)
def test_metric_for_best_model_is_stored_as_the_full_eval_key(tmp_path: Path, given: str, stored: str) -> None:
    config = config_from_dict(_data(tmp_path, metric_for_best_model=given))
    assert config.train.metric_for_best_model == stored
    assert config_from_dict(config.to_dict()) == config


def test_the_default_best_model_metric_is_eval_mean(tmp_path: Path) -> None:
    config = config_from_dict(_data(tmp_path))
    assert (config.train.metric_for_best_model, config.train.greater_is_better) == ("eval/mean", None)
    assert config.best_model_greater_is_better() is True


@pytest.mark.parametrize(
    ("metric", "tasks_update", "expected"),
    [
        ("eval/stsb/mse", {}, False),
        ("eval/stsb/pearson", {}, True),
        ("eval/rte/f1", {}, True),
        # a task's greater_is_better speaks for its main metric, whose direction hfmtl may not know
        ("eval/rte/my_score", {"metrics": ["evaluate:./my_score.py"], "greater_is_better": False}, False),
        ("eval/rte/my_score", {"metrics": ["accuracy"], "main_metric": "my_score", "greater_is_better": True}, True),
    ],
)
def test_greater_is_better_comes_from_the_metric(tmp_path: Path, metric: str, tasks_update: dict, expected) -> None:
    data = _data(tmp_path, metric_for_best_model=metric)
    data["tasks"]["rte"].update(tasks_update)
    assert config_from_dict(data).best_model_greater_is_better() is expected


def test_greater_is_better_when_set_wins(tmp_path: Path) -> None:
    config = config_from_dict(_data(tmp_path, metric_for_best_model="stsb/mse", greater_is_better=True))
    assert config.best_model_greater_is_better() is True


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            {"metric_for_best_model": "eval/rtx/accuracy"},
            "train.metric_for_best_model='eval/rtx/accuracy' names unknown task 'rtx'; did you mean 'rte'?; "
            "tasks are ['rte', 'stsb']",
        ),
        (
            {"metric_for_best_model": "accuracy"},
            "train.metric_for_best_model='accuracy' must be eval/mean or eval/<task>/<metric> (e.g. eval/rte/accuracy)",
        ),
        (
            {"metric_for_best_model": "eval/rte/"},
            "train.metric_for_best_model='eval/rte/' must be eval/mean or eval/<task>/<metric> (e.g. eval/rte/accuracy)",
        ),
        (
            {"metric_for_best_model": "rte/my_score"},
            "train.metric_for_best_model='eval/rte/my_score': hfmtl does not know whether a higher 'my_score' is "
            "better; set train.greater_is_better: true (or false)",
        ),
        (
            {"greater_is_better": False},
            "train.greater_is_better=false with metric_for_best_model=eval/mean: eval/mean is always "
            "higher-is-better (lower-is-better metrics enter it negated); drop train.greater_is_better",
        ),
    ],
)
def test_best_model_metric_errors(tmp_path: Path, train: dict, message: str) -> None:
    assert _error(_data(tmp_path, **train)) == message


def test_a_staged_config_checks_the_metric_against_each_stage(tmp_path: Path) -> None:
    data = _data(tmp_path, metric_for_best_model="rte/accuracy")
    data["stages"] = {"first": {"tasks": ["stsb"]}, "second": {"tasks": ["rte"]}}
    config = config_from_dict(data)  # rte is a task of the run
    with pytest.raises(ConfigError, match=r"^stages\.first: train\.metric_for_best_model='eval/rte/accuracy' names"):
        plan_stages(config)

    data["stages"]["first"]["train"] = {"metric_for_best_model": "stsb/pearson"}
    first, second = plan_stages(config_from_dict(data))
    assert first.config.train.metric_for_best_model == "eval/stsb/pearson"
    assert second.config.train.metric_for_best_model == "eval/rte/accuracy"
