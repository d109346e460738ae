"""Tests of the config reference (hfmtl/config/reference.py): docs/config.md matches the code, every key
has its help, allowed values come from the types, and ``hfmtl config`` prints it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest
from conftest import REPO_ROOT

from hfmtl.balancing import BALANCERS
from hfmtl.cli.main import main as cli_main
from hfmtl.config import BalancingConfig, ModelConfig, PeftSection, SamplingConfig, StageConfig, TrainConfig
from hfmtl.config.reference import render_markdown, render_text, sections
from hfmtl.tasks import TASK_TYPES, TaskConfig
from hfmtl.training.sampling import SAMPLING_CHOICES

DOCS = REPO_ROOT / "docs" / "config.md"
CONFIG_CLASSES = [
    ModelConfig,
    SamplingConfig,
    TrainConfig,
    PeftSection,
    BalancingConfig,
    StageConfig,
    TaskConfig,
    *(task.config_class for task in TASK_TYPES.values()),
]


def test_docs_config_md_is_what_the_code_generates() -> None:
    expected = render_markdown()
    assert DOCS.read_text() == expected, (
        "docs/config.md is out of date with the config classes: regenerate it with "
        "`hfmtl config --markdown > docs/config.md`"
    )


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda cls: cls.__name__)
def test_every_key_has_help(cls: type) -> None:
    missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")]
    assert not missing, f"{cls.__name__}: fields without metadata help: {missing}"


def test_every_key_of_every_section_is_in_the_reference() -> None:
    docs = {doc.name: doc for doc in sections()}
    assert list(docs) == [
        "model",
        "tasks",
        *(f"tasks.{name}" for name in sorted(TASK_TYPES)),
        "sampling",
        "train",
        "peft",
        "balancing",
        "stages",
    ]
    for name, cls in [
        ("model", ModelConfig),
        ("tasks", TaskConfig),
        ("sampling", SamplingConfig),
        ("train", TrainConfig),
        ("peft", PeftSection),
        ("balancing", BalancingConfig),
        ("stages", StageConfig),
    ]:
        assert [key.name for key in docs[name].keys] == [f.name for f in dataclasses.fields(cls)]
    for type_name, task_class in TASK_TYPES.items():
        shown = {key.name for key in docs[f"tasks.{type_name}"].keys} | {key.name for key in docs["tasks"].keys}
        assert shown == {f.name for f in dataclasses.fields(task_class.config_class)}
    # a task type shows the keys it adds and those whose default it changes
    qa = {key.name: key for key in docs["tasks.question_answering"].keys}
    assert qa["max_length"].default == "384" and qa["metrics"].default == "[squad]"
    assert "type" not in qa and "eval_split" not in qa


def test_a_key_shows_its_type_default_allowed_values_and_help() -> None:
    train = {key.name: key for key in next(doc for doc in sections() if doc.name == "train").keys}

    strategy = train["train_sampling_strategy"]
    assert (strategy.type, strategy.default) == ("str", "group_by_length")
    assert strategy.allowed == typing.get_args(typing.get_type_hints(TrainConfig)["train_sampling_strategy"])
    assert strategy.allowed == ("random", "group_by_length")
    assert strategy.help == TrainConfig.__dataclass_fields__["train_sampling_strategy"].metadata["help"]

    assert (train["output_dir"].type, train["output_dir"].default) == ("str", "required")
    assert (train["warmup_steps"].type, train["warmup_steps"].default, train["warmup_steps"].allowed) == (
        "float",
        "0.0",
        (),
    )
    assert (train["mixed_precision"].type, train["mixed_precision"].allowed) == ("str | null", ("no", "fp16", "bf16"))
    assert train["report_to"].type == "list[str]" and train["report_to"].default == "[]"

    balancing = {key.name: key for key in next(doc for doc in sections() if doc.name == "balancing").keys}
    assert balancing["method"].allowed == tuple(sorted(BALANCERS))  # from the registry


def test_choices_other_modules_use_come_from_the_literal_type() -> None:
    assert typing.get_args(typing.get_type_hints(SamplingConfig)["strategy"]) == SAMPLING_CHOICES
    assert SAMPLING_CHOICES == ("proportional", "temperature", "uniform", "round_robin", "weights")


def test_the_reference_names_the_renamed_keys() -> None:
    train = next(doc for doc in sections() if doc.name == "train")
    assert train.renamed == {
        "warmup_ratio": "warmup_steps",
        "group_by_length": "train_sampling_strategy",
        "hub_private": "hub_private_repo",
    }
    assert "`warmup_ratio` → `warmup_steps`" in render_markdown()
    assert "warmup_ratio -> warmup_steps" in render_text("train")


def test_hfmtl_config_list_prints_one_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["config", "--list", "train"]) == 0
    out = capsys.readouterr().out
    assert out == render_text("train")
    assert out.startswith("train: Optimisation, evaluation, checkpointing and output.")
    assert "\n  warmup_steps: float = 0.0\n      Linear warmup from 0 to learning_rate" in out
    assert "\n  train_sampling_strategy: str = group_by_length\n" in out
    assert "random shuffles them one by one. One of: random, group_by_length." in " ".join(out.split())
    assert not out.startswith("model:") and "\nmodel:" not in out and "\n  pooling:" not in out


def test_hfmtl_config_list_tasks_prints_the_common_keys_and_every_type(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["config", "--list", "tasks"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tasks.<task>: One entry per task")
    for type_name in TASK_TYPES:
        assert f"\ntasks.<task> (type: {type_name}):" in out
    assert "\n  eval_split: str | null = validation\n" in out
    assert "\ntrain:" not in out


def test_hfmtl_config_without_a_section_lists_them_all(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["config"]) == 0
    assert capsys.readouterr().out == render_text()


def test_hfmtl_config_markdown_is_docs_config_md(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out == DOCS.read_text()


def test_hfmtl_config_unknown_section_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["config", "--list", "trian"]) == 2
    assert capsys.readouterr().err == "error: no config section 'trian'; did you mean 'train'?\n"
    assert cli_main(["config", "--list", "zzz"]) == 2
    assert capsys.readouterr().err == (
        "error: no config section 'zzz'; the sections are model, tasks, tasks.classification, "
        "tasks.multiple_choice, tasks.question_answering, tasks.regression, tasks.token_classification, "
        "sampling, train, peft, balancing, stages\n"
    )


def test_import_hfmtl_config_loads_no_torch() -> None:
    code = "import hfmtl.config, sys; assert 'torch' not in sys.modules, 'hfmtl.config imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
