"""The command line agrees with its help: each command takes its arguments in every spelling its help
shows (``--config CONFIG`` or CONFIG first; overrides before or after options), and says clearly what
is wrong with a line it cannot take."""

from __future__ import annotations

import json

import pytest
from conftest import TASK_CONFIGS, make_config, write_config
from hfmtl.recipes import analyze, cv, evaluate, train

from hfmtl import cli


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "run.yaml", "train.max_steps=5", "tasks.rte.batch_size=4"],
        ["run.yaml", "train.max_steps=5", "tasks.rte.batch_size=4"],
        ["train.max_steps=5", "--config", "run.yaml", "--cpu", "tasks.rte.batch_size=4"],
        ["run.yaml", "--cpu", "train.max_steps=5", "tasks.rte.batch_size=4"],
    ],
)
def test_train_takes_the_config_either_way_and_overrides_anywhere(argv):
    args = train.parse_args(argv)
    assert args.config == "run.yaml" and args.overrides == ["train.max_steps=5", "tasks.rte.batch_size=4"]


def test_eval_takes_overrides_after_its_options():
    args = evaluate.parse_args(["outputs/glue", "--config", "run.yaml", "train.seed=3", "--cpu", "--output", "r.json"])
    assert (args.model, args.config, args.overrides, args.cpu, args.output) == (
        "outputs/glue",
        "run.yaml",
        ["train.seed=3"],
        True,
        "r.json",
    )
    assert evaluate.parse_args(["outputs/glue", "run.yaml", "train.seed=3"]).config == "run.yaml"


def test_analyze_and_cv_take_the_same_spellings():
    args = analyze.parse_args(["run.yaml", "--output", "out", "train.seed=3"])
    assert (args.config, args.output, args.overrides) == ("run.yaml", "out", ["train.seed=3"])
    for argv in (
        ["--folds", "3", "--config", "run.yaml", "train.max_steps=2"],
        ["run.yaml", "--folds", "3", "train.max_steps=2"],
    ):
        args = cv.parse_args(argv)
        assert (args.config, args.folds, args.overrides) == ("run.yaml", 3, ["train.max_steps=2"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train.max_steps=5"], "give the run config: --config CONFIG, or CONFIG as the first argument"),
        (["run.yaml", "oops"], "'oops' is not an override: write section.key=value"),
    ],
)
def test_a_line_the_recipe_cannot_take_is_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_hfmtl_train_help_is_the_recipe_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config CONFIG" in out and "section.key=value" in out


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_hfmtl_train_with_config_flag_and_overrides_after_options(tiny_encoder_dir, tmp_path):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "run.yaml", make_config(tiny_encoder_dir, out, {"rte": TASK_CONFIGS["rte"]}))
    assert cli.main(["train", "--config", str(cfg), "--cpu", "train.max_steps=2", "train.eval_steps=2"]) == 0
    assert json.loads((out / "metrics.json").read_text())["train"]["steps"] == 2
