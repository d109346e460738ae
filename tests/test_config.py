"""Tests of `hfmtl.config`: YAML + ``key=value`` overrides -> typed, validated RunConfig, and back.

Every user error must be a one-line `ConfigError` that names the dotted key, the bad value and what is
allowed; each error test below checks those fragments of the message, not only the exception type.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml
from conftest import TASK_CONFIGS, data_files

from hfmtl.config import ModelConfig, RunConfig, SamplingConfig, TrainConfig, load_config, save_config
from hfmtl.errors import ConfigError, HfmtlError
from hfmtl.tasks.classification import ClassificationConfig, RegressionConfig
from hfmtl.tasks.multiple_choice import MultipleChoiceConfig
from hfmtl.tasks.question_answering import QuestionAnsweringConfig
from hfmtl.tasks.token_classification import TokenClassificationConfig


def _base(tmp_path: Path) -> dict:
    """A minimal valid config dict with two tasks (rte, stsb) and no `sampling:` section."""
    return {
        "model": {"name_or_path": "/models/tiny-encoder", "max_length": 64},
        "tasks": {"rte": copy.deepcopy(TASK_CONFIGS["rte"]), "stsb": copy.deepcopy(TASK_CONFIGS["stsb"])},
        "train": {"output_dir": str(tmp_path / "out"), "max_steps": 10},
    }


def _write(tmp_path: Path, data: dict | str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _error(path: Path, overrides: list[str] = ()) -> str:
    """The message of the ConfigError that loading `path` with `overrides` raises (one line)."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, f"a config error must be one line: {message!r}"
    return message


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return _write(tmp_path, _base(tmp_path))


# ------------------------------------------------------------------------------------------------
# Loading and overrides


def test_load_config_builds_typed_sections(config_file: Path, tmp_path: Path) -> None:
    cfg = load_config(config_file)

    assert isinstance(cfg, RunConfig)
    assert isinstance(cfg.model, ModelConfig) and isinstance(cfg.train, TrainConfig)
    assert cfg.model.name_or_path == "/models/tiny-encoder"
    assert cfg.model.max_length == 64
    assert cfg.model.pooling == "auto"  # default: the encoder's own (hfmtl/model/pooling.py)
    assert cfg.train.output_dir == str(tmp_path / "out")
    assert cfg.train.max_steps == 10
    assert cfg.train.learning_rate == 5e-5 and cfg.train.seed == 42  # defaults
    # no `sampling:` section: the defaults
    assert cfg.sampling == SamplingConfig()
    assert cfg.sampling.strategy == "proportional" and cfg.sampling.temperature == 2.0

    # each task's `type` picks its config class
    assert list(cfg.tasks) == ["rte", "stsb"]
    assert type(cfg.tasks["rte"]) is ClassificationConfig
    assert type(cfg.tasks["stsb"]) is RegressionConfig
    assert cfg.tasks["rte"].label_names == ["entailment", "not_entailment"]
    assert cfg.tasks["rte"].text_pair_column == "sentence2"
    assert cfg.tasks["rte"].data_files == data_files("rte")
    assert cfg.tasks["rte"].batch_size is None


def test_every_task_type_of_conftest_loads(tmp_path: Path) -> None:
    data = _base(tmp_path)
    data["tasks"] = copy.deepcopy(TASK_CONFIGS)
    cfg = load_config(_write(tmp_path, data))

    expected = {
        "rte": ClassificationConfig,
        "stsb": RegressionConfig,
        "ner": TokenClassificationConfig,
        "copa": MultipleChoiceConfig,
        "squad": QuestionAnsweringConfig,
    }
    assert {name: type(c) for name, c in cfg.tasks.items()} == expected
    assert cfg.tasks["squad"].max_length == 128
    assert cfg.tasks["ner"].label_names[1] == "B-PER"


def test_overrides_set_values_of_every_kind(config_file: Path) -> None:
    cfg = load_config(
        config_file,
        [
            "train.max_steps=20",
            "tasks.rte.batch_size=16",
            "train.report_to=[tensorboard, wandb]",
            "tasks.rte.metrics=[accuracy, matthews_correlation, evaluate:glue]",
            "sampling.strategy=temperature",  # creates the missing `sampling:` section
            "sampling.temperature=3",  # an int for a float field
            "model.pooling=mean",
            "train.train_sampling_strategy=random",
            "train.max_grad_norm=",  # empty value -> null
        ],
    )
    assert cfg.train.max_steps == 20
    assert cfg.tasks["rte"].batch_size == 16
    assert cfg.tasks["stsb"].batch_size is None  # only rte changed
    assert cfg.train.report_to == ["tensorboard", "wandb"]
    assert cfg.tasks["rte"].metrics == ["accuracy", "matthews_correlation", "evaluate:glue"]
    assert cfg.sampling.strategy == "temperature"
    assert cfg.sampling.temperature == 3.0 and isinstance(cfg.sampling.temperature, float)
    assert cfg.model.pooling == "mean"
    assert cfg.train.train_sampling_strategy == "random"
    assert cfg.train.max_grad_norm is None


def test_scalar_for_a_list_field_becomes_a_one_element_list(config_file: Path) -> None:
    assert load_config(config_file, ["train.report_to=tensorboard"]).train.report_to == ["tensorboard"]


def test_later_override_of_the_same_key_wins(config_file: Path) -> None:
    assert load_config(config_file, ["train.max_steps=20", "train.max_steps=30"]).train.max_steps == 30


def test_exponent_floats_that_pyyaml_reads_as_strings_become_floats(tmp_path: Path) -> None:
    # PyYAML implements YAML 1.1, where a float needs a dot: '5e-5' is the *string* '5e-5'.
    assert yaml.safe_load("learning_rate: 5e-5") == {"learning_rate": "5e-5"}

    data = yaml.safe_dump(_base(tmp_path), sort_keys=False).replace(
        "max_steps: 10", "max_steps: 10\n  learning_rate: 5e-5"
    )
    path = _write(tmp_path, data)
    assert "learning_rate: 5e-5" in path.read_text()
    from_file = load_config(path)
    assert from_file.train.learning_rate == 5e-05
    assert type(from_file.train.learning_rate) is float

    from_override = load_config(path, ["train.learning_rate=3e-4", "train.max_grad_norm=5e-1"])
    assert from_override.train.learning_rate == 3e-04 and type(from_override.train.learning_rate) is float
    assert from_override.train.max_grad_norm == 0.5  # `float | None` field


def test_list_of_data_files_per_split(config_file: Path) -> None:
    cfg = load_config(config_file, ["tasks.rte.data_files.train=[a.jsonl, b.jsonl]"])
    assert cfg.tasks["rte"].data_files == {
        "train": ["a.jsonl", "b.jsonl"],
        "validation": data_files("rte")["validation"],
    }


# ------------------------------------------------------------------------------------------------
# Errors: each names the dotted key, the bad value and what is allowed


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        # unknown keys, with the close name suggested
        (["train.max_step=20"], ["train.max_step", "did you mean 'max_steps'"]),
        (["model.name_or_pth=x"], ["model.name_or_pth", "did you mean 'name_or_path'"]),
        (["tasks.rte.text_colum=s"], ["tasks.rte.text_colum", "did you mean 'text_column'"]),
        (["trian.max_steps=20"], ["unknown section 'trian'", "did you mean 'train'"]),
        # wrong types
        (["train.max_steps=abc"], ["train.max_steps='abc'", "must be an integer"]),
        (["train.max_steps=2.5"], ["train.max_steps=2.5", "must be an integer"]),
        (["train.max_steps=true"], ["train.max_steps=True", "must be an integer"]),
        (["train.learning_rate=fast"], ["train.learning_rate='fast'", "must be a number"]),
        (["train.push_to_hub=maybe"], ["train.push_to_hub='maybe'", "must be true or false"]),
        (["train.report_to={a: 1}"], ["train.report_to={'a': 1}", "must be a list"]),
        (["tasks.rte.text_column=[a, b]"], ["tasks.rte.text_column=['a', 'b']", "must be a string"]),
        (["sampling.weights=[rte]"], ["sampling.weights=['rte']", "must be a mapping"]),
        # values outside a set of choices
        (["model.pooling=max"], ["model.pooling='max'", "choose one of 'cls', 'mean', 'last', 'auto'"]),
        (["train.mixed_precision=fp8"], ["train.mixed_precision='fp8'", "choose one of 'no', 'fp16', 'bf16'"]),
        (
            ["sampling.strategy=foo"],
            ["sampling.strategy='foo'", "'proportional', 'temperature', 'uniform', 'round_robin', 'weights'"],
        ),
        (["train.lr_scheduler_type=exp"], ["train.lr_scheduler_type='exp'", "'linear', 'cosine'"]),
        (["train.optim=sgd"], ["train.optim='sgd'", "'adamw_torch_fused', 'adamw_torch'"]),
        (
            ["train.train_sampling_strategy=sorted"],
            ["train.train_sampling_strategy='sorted'", "choose one of 'random', 'group_by_length'"],
        ),
        (["model.init_heads=foo"], ["model.init_heads='foo'", "choose one of 'auto', 'none'"]),
        # negative / zero / out-of-range values
        (["train.learning_rate=-1e-5"], ["train.learning_rate=-1e-05", "must be > 0"]),
        (["train.max_steps=0"], ["train.max_steps=0", "must be > 0"]),
        (["train.per_device_train_batch_size=-8"], ["train.per_device_train_batch_size=-8", "must be > 0"]),
        (["train.weight_decay=-0.1"], ["train.weight_decay=-0.1", "must be >= 0"]),
        (["train.warmup_steps=-1"], ["train.warmup_steps=-1.0", "must be a ratio of the total steps in [0, 1)"]),
        (["train.warmup_steps=2.5"], ["train.warmup_steps=2.5", "or a whole number of steps"]),
        (["train.warmup_ratio=1.5"], ["train.warmup_ratio=1.5", "must be in [0, 1)"]),
        (["model.max_length=-5"], ["model.max_length=-5", "must be > 0"]),
        (["model.classifier_dropout=1"], ["model.classifier_dropout=1.0", "must be in [0, 1)"]),
        (["sampling.temperature=-2"], ["sampling.temperature=-2.0", "must be > 0"]),
        (["sampling.max_examples=0"], ["sampling.max_examples=0", "must be > 0"]),
        (
            ["sampling.strategy=weights", "sampling.weights={rte: -1, stsb: 1}"],
            ["sampling.weights.rte=-1.0", "must be >= 0"],
        ),
        (["tasks.rte.batch_size=-1"], ["tasks.rte", "batch_size=-1", "must be > 0"]),
        (["tasks.rte.max_train_samples=0"], ["tasks.rte", "max_train_samples=0", "must be > 0"]),
        # tasks
        (
            ["tasks.rte.type=clasification"],
            [
                "tasks.rte.type='clasification'",
                "did you mean 'classification'",
                "known: classification, multiple_choice, question_answering, regression, token_classification",
            ],
        ),
        (["tasks.rte.data_files=null"], ["tasks.rte", "`dataset`", "`data_files`"]),
        (
            ["tasks.rte.metrics=[accuracy, acc]"],
            ["tasks.rte.metrics[1]='acc'", "is not a metric", "'accuracy'", "'matthews_correlation'", "evaluate:"],
        ),
        (["tasks.rte.metrics=['evaluate:']"], ["tasks.rte.metrics[0]='evaluate:'", "is not a metric"]),
        # sampling across tasks
        (
            ["sampling.weights={rte: 1, foo: 2}"],
            ["sampling.weights", "unknown task(s) ['foo']", "tasks are ['rte', 'stsb']"],
        ),
        (["sampling.strategy=weights"], ["sampling.strategy='weights'", "needs sampling.weights"]),
        # malformed overrides
        (["train.max_steps"], ["override 'train.max_steps'", "section.key=value"]),
        (["=5"], ["override '=5'", "section.key=value"]),
        (["train.max_steps.x=1"], ["override 'train.max_steps.x=1'", "'max_steps' is a value, not a section"]),
    ],
)
def test_invalid_values_raise_a_config_error_naming_key_value_and_allowed(
    config_file: Path, overrides: list[str], fragments: list[str]
) -> None:
    message = _error(config_file, overrides)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_config_error_is_a_user_error_and_a_value_error() -> None:
    assert issubclass(ConfigError, HfmtlError)
    assert issubclass(ConfigError, ValueError)


def test_task_without_type(tmp_path: Path) -> None:
    data = _base(tmp_path)
    del data["tasks"]["rte"]["type"]
    message = _error(_write(tmp_path, data))
    assert message.startswith("tasks.rte needs a `type:`")
    assert "classification, multiple_choice, question_answering, regression, token_classification" in message


def test_task_with_neither_dataset_nor_data_files(tmp_path: Path) -> None:
    data = _base(tmp_path)
    del data["tasks"]["stsb"]["data_files"]
    message = _error(_write(tmp_path, data))
    assert message.startswith("tasks.stsb.dataset is not set")
    assert "`dataset`" in message and "`data_files`" in message


def test_task_with_a_hub_dataset_and_no_data_files_is_valid(tmp_path: Path) -> None:
    data = _base(tmp_path)
    data["tasks"]["rte"] = {"type": "classification", "dataset": "glue", "subset": "rte"}
    cfg = load_config(_write(tmp_path, data))
    assert (cfg.tasks["rte"].dataset, cfg.tasks["rte"].subset, cfg.tasks["rte"].data_files) == ("glue", "rte", None)


def test_task_name_must_be_an_identifier(tmp_path: Path) -> None:
    data = _base(tmp_path)
    data["tasks"]["my-task"] = data["tasks"].pop("rte")
    assert "task name 'my-task' must be a Python identifier" in _error(_write(tmp_path, data))


def test_empty_tasks(tmp_path: Path) -> None:
    data = _base(tmp_path)
    data["tasks"] = {}
    assert "tasks is empty" in _error(_write(tmp_path, data))


@pytest.mark.parametrize("section", ["model", "tasks", "train"])
def test_missing_required_section(tmp_path: Path, section: str) -> None:
    data = _base(tmp_path)
    del data[section]
    assert _error(_write(tmp_path, data)) == f"the config has no `{section}:` section"


@pytest.mark.parametrize(("section", "key"), [("model", "name_or_path"), ("train", "output_dir")])
def test_missing_required_key(tmp_path: Path, section: str, key: str) -> None:
    data = _base(tmp_path)
    del data[section][key]
    assert _error(_write(tmp_path, data)) == f"{section}.{key} is required"


def test_section_that_is_not_a_mapping(config_file: Path) -> None:
    assert "train must be a mapping of keys to values, got 5" in _error(config_file, ["train=5"])


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert _error(path) == f"config file {str(path)!r} does not exist"


def test_invalid_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: {name_or_path: x\ntrain: [unclosed\n")
    message = _error(path)
    assert message.startswith(f"config file {str(path)!r} is not valid YAML:")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("- model\n- train\n", "a config must be a mapping"), ("", "the config has no `model:` section")],
)
def test_yaml_that_is_not_a_config(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in _error(_write(tmp_path, text))


# ------------------------------------------------------------------------------------------------
# Round trip


def test_save_then_load_gives_an_equal_config(tmp_path: Path) -> None:
    data = _base(tmp_path)
    data["tasks"] = copy.deepcopy(TASK_CONFIGS)
    data["tasks"]["rte"].update(batch_size=16, metrics=["accuracy", "f1"], main_metric="f1")
    data["sampling"] = {"strategy": "weights", "weights": {"rte": 2.0, "ner": 0.5}, "max_examples": 1000}
    data["model"].update(pooling="mean", classifier_dropout=0.2)
    data["train"].update(
        report_to=["tensorboard"], train_sampling_strategy="random", mixed_precision="bf16", max_grad_norm=None
    )
    original = load_config(_write(tmp_path, data), ["train.learning_rate=5e-5", "train.warmup_steps=0.1"])

    saved = tmp_path / "resolved.yaml"
    save_config(original, saved)
    loaded = load_config(saved)

    assert loaded.to_dict() == original.to_dict()
    assert loaded == original  # dataclass equality, task config classes included
    assert {n: type(c) for n, c in loaded.tasks.items()} == {n: type(c) for n, c in original.tasks.items()}
    assert loaded.train.learning_rate == 5e-05 and loaded.sampling.weights == {"rte": 2.0, "ner": 0.5}

    # a second round trip writes the very same file
    saved_again = tmp_path / "resolved-again.yaml"
    save_config(loaded, saved_again)
    assert saved_again.read_text() == saved.read_text()


def test_to_dict_holds_every_field_of_every_section(config_file: Path) -> None:
    d = load_config(config_file).to_dict()
    assert list(d) == ["model", "tasks", "train", "sampling", "peft", "balancing", "stages"]
    assert set(d["train"]) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(d["tasks"]["rte"]) == {f.name for f in dataclasses.fields(ClassificationConfig)}
    assert d["tasks"]["rte"]["type"] == "classification"


# ------------------------------------------------------------------------------------------------
# Known bugs (see the report of the session that wrote these tests)


def test_task_level_error_names_the_full_dotted_key(config_file: Path) -> None:
    assert "tasks.rte.batch_size=-1 must be > 0" in _error(config_file, ["tasks.rte.batch_size=-1"])


def test_nan_learning_rate_is_rejected(config_file: Path) -> None:
    assert "train.learning_rate=nan" in _error(config_file, ["train.learning_rate=nan"])


def test_negative_seed_is_rejected_at_load_time(config_file: Path) -> None:
    assert "train.seed=-1" in _error(config_file, ["train.seed=-1"])
