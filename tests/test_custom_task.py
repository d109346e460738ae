"""A task type defined outside hfmtl works end to end with no change to any hfmtl module.

`NumberCountTask` below counts the numbers in a text: its own head (a score per token, padding masked
out), its own loss (the squared error of the summed token probabilities against the count), its own
collation (float counts) and its own predictor. It is named in the run config by its path
(``test_custom_task:NumberCountTask``), and the saved model names it the same way, so loading the model
imports this module again. The test trains it with the real recipe, reloads it through
`transformers.AutoModel`, predicts with `hfmtl.Predictor`, and checks the model card, the export's
refusal and the transferability features.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from conftest import make_config, reset_accelerate_state, run_recipe, write_config
from fake_hub import check_card_metadata
from scipy.special import expit
from torch import nn
from torch.nn import functional as F

import hfmtl
from hfmtl.analysis import extract_features, logme
from hfmtl.cli.predict import model_info
from hfmtl.errors import ConfigError, HfmtlError
from hfmtl.publish.export import export_model_dir
from hfmtl.publish.model_card import build_model_card
from hfmtl.tasks import FeatureUnit, Task, TaskConfig, Unsupported, UsageSnippet, get_task_class
from hfmtl.tasks.prediction import PredictOptions, TaskPredictor
from hfmtl.training.data import prepare_task_data

# --- the task type: nothing below is part of hfmtl ------------------------------------------------


@dataclass
class NumberCountConfig(TaskConfig):
    text_column: str = field(default="text", metadata={"help": "Column with the text."})
    count_column: str = field(default="count", metadata={"help": "Column with the number of numbers in it."})


class TokenCountHead(nn.Module):
    """One score per token: the evidence that the token is a number; padding scores as far below 0 as
    the dtype goes, so its probability is 0 and a count never depends on the batch's padding."""

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        scores = self.score(self.dropout(hidden_states)).squeeze(-1)
        if attention_mask is None:
            return scores
        return scores.masked_fill(attention_mask == 0, torch.finfo(scores.dtype).min)


class NumberCountTask(Task):
    """How many numbers a text holds, as the sum of per-token probabilities of being a number."""

    config_class = NumberCountConfig
    config: NumberCountConfig
    default_metrics = ("mae",)
    # a number per text: the Hub files regression heads under text-classification, as transformers does
    pipeline_tag = "text-classification"

    def required_columns(self) -> list[str]:
        return [self.config.text_column, self.config.count_column]

    def head_spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "num_labels": 1}

    def preprocess(self, examples: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
        features = tokenizer(examples[self.config.text_column], truncation=True, max_length=max_length)
        features["labels"] = [float(n) for n in examples[self.config.count_column]]
        return features

    def collate(self, features: list[dict[str, Any]], tokenizer) -> dict[str, torch.Tensor]:
        batch = self.pad_features(features, tokenizer, with_labels=False)
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.float32)
        return batch

    @staticmethod
    def build_head(spec: dict[str, Any], hidden_size: int, dropout: float, pooling: str) -> nn.Module:
        return TokenCountHead(hidden_size, dropout)

    @staticmethod
    def compute_loss(spec: dict[str, Any], logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(torch.sigmoid(logits.float()).sum(dim=-1), labels.float())

    def eval_outputs(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"predictions": torch.sigmoid(logits.float()).sum(dim=-1), "labels": batch["labels"].float()}

    def compute_metrics(self, outputs, eval_features, eval_examples) -> dict[str, float]:
        predictions = np.concatenate([o["predictions"] for o in outputs])
        labels = np.concatenate([o["labels"] for o in outputs])
        return self._compute_named_metrics(predictions, labels)

    @classmethod
    def predictor_class(cls) -> type[TaskPredictor]:
        return NumberCountPredictor

    @classmethod
    def describe_predictions(cls, spec: dict[str, Any]) -> str:
        return "how many numbers the text holds"

    @classmethod
    def usage_snippet(cls, task_name: str, spec: dict[str, Any], section: dict[str, Any]) -> UsageSnippet:
        task = repr(task_name)
        return UsageSnippet(
            (
                'inputs = tokenizer("She bought 3 apples and 12 pears.", return_tensors="pt")',
                f"scores = model(task={task}, **inputs).logits  # (1, tokens): is each token a number?",
                f"print({task}, scores.sigmoid().sum().item())",
            )
        )

    @classmethod
    def feature_unit(cls) -> FeatureUnit:
        return FeatureUnit("example", regression=True)

    # standard_head and check_mixed_batch: Task's defaults (no standard head; rows may mix)


class NumberCountPredictor(TaskPredictor):
    """``{"count": int, "expected": float}``: the summed probabilities, and their nearest integer."""

    default_fields = {"text_column": "text"}

    @property
    def fields(self) -> list[str]:
        return [self.config.text_column]

    def parse_mapping(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": self._get(item, self.config.text_column, "str")}

    def parse_shorthand(self, item: Any) -> dict[str, Any]:
        if isinstance(item, str):
            return {"text": item}
        return super().parse_shorthand(item)

    def encode(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        encoded = self.tokenizer([it["text"] for it in items], truncation=True, max_length=self.max_length)
        return [{**{k: v[i] for k, v in encoded.items()}, "item": i} for i in range(len(items))]

    def decode(self, items, features, logits, options: PredictOptions) -> list[dict[str, Any]]:
        expected = [float(expit(row.astype(np.float64)).sum()) for row in logits]  # padding: expit(-3e38) = 0
        return [{"count": round(value), "expected": value} for value in expected]


TYPE = f"{NumberCountTask.__module__}:NumberCountTask"

# --- data: sentences with 0 to 3 numbers in them ----------------------------------------------------

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "saw",
    "ran",
    "near",
    "river",
    "house",
    "red",
    "blue",
    "old",
    "man",
    "woman",
    "city",
    "park",
    "green",
    "tree",
    "bird",
    "sang",
]


def sentences(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 9))]
        count = rng.randint(0, 3)
        for _ in range(count):
            words.insert(rng.randint(0, len(words)), str(rng.randint(1, 99)))
        rows.append({"text": " ".join(words).capitalize() + ".", "count": count})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def trained(tiny_encoder_dir, tmp_path_factory) -> dict[str, Any]:
    """The recipe run once: a model with one NumberCountTask head, saved with its card."""
    reset_accelerate_state()
    root = tmp_path_factory.mktemp("custom-task")
    validation = sentences(48, seed=1)
    task = {
        "type": TYPE,
        "data_files": {
            "train": write_jsonl(root / "train.jsonl", sentences(192, seed=0)),
            "validation": write_jsonl(root / "validation.jsonl", validation),
        },
    }
    out = root / "run"
    config = make_config(
        tiny_encoder_dir,
        out,
        {"count": task},
        samples=192,
        eval_samples=48,
        max_steps=200,
        eval_steps=40,
        learning_rate=3e-3,
        load_best_model_at_end=False,
        # a text grows with its count: batches grouped by length would each hold nearly one count
        train_sampling_strategy="random",
    )
    trainer = run_recipe(write_config(root / "run.yaml", config))
    return {"out": out, "trainer": trainer, "validation": validation, "task_config": task}


# --- the checks ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_recipe_trains_it_and_saves_its_type_by_path(trained):
    history = json.loads((trained["out"] / "metrics.json").read_text())["history"]
    maes = [entry["eval/count/mae"] for entry in history]
    assert [entry["step"] for entry in history] == [40, 80, 120, 160, 200]
    counts = np.array([row["count"] for row in trained["validation"]], dtype=float)
    constant = np.abs(counts - np.median(counts)).mean()  # the best constant guess
    # measured on this seed: 0.77 at step 40, 0.05 at step 200; the best constant guess scores 0.83
    assert maes[-1] < 0.6 * maes[0] and maes[-1] < 0.5 * constant, (maes, constant)
    saved = json.loads((trained["out"] / "config.json").read_text())
    assert saved["tasks"]["count"] == {"type": TYPE, "num_labels": 1}


@pytest.mark.slow
def test_it_reloads_through_automodel_in_a_fresh_process(trained, tiny_encoder_dir):
    out = trained["out"]
    model = transformers.AutoModel.from_pretrained(out).eval()
    assert isinstance(model.heads["count"], TokenCountHead)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["It cost 5 dollars.", "No numbers here at all, none."], padding=True, return_tensors="pt")
    trained_model = trained["trainer"].unwrapped_model().eval()
    with torch.no_grad():
        reloaded, original = model(task="count", **batch).logits, trained_model(task="count", **batch).logits
    torch.testing.assert_close(reloaded, original, rtol=1e-5, atol=1e-6)
    # rows of this task may share an encoder pass with others' (Task's default)
    with torch.no_grad():
        mixed = model.forward_mixed(["count", "count"], **batch)
    torch.testing.assert_close(torch.stack(mixed), reloaded)

    # a fresh interpreter has not imported this module: loading the model imports it from the saved type
    code = (
        "import sys, transformers, hfmtl; "
        f"model = transformers.AutoModel.from_pretrained({str(out)!r}); "
        "print(type(model.heads['count']).__module__, 'test_custom_task' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}  # where this module is, as for a user's package
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [NumberCountTask.__module__, "True"]


@pytest.fixture
def untrained(tiny_encoder_dir, tmp_path) -> Path:
    """A model with a fresh NumberCountTask head, saved with its tokenizer (no training)."""
    model = hfmtl.MultiTaskModel.from_encoder(tiny_encoder_dir, {"count": {"type": TYPE, "num_labels": 1}})
    model.save_pretrained(tmp_path / "untrained")
    transformers.AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(tmp_path / "untrained")
    return tmp_path / "untrained"


def test_a_type_whose_module_is_missing_is_a_one_line_error(untrained):
    config = json.loads((untrained / "config.json").read_text())
    assert config["tasks"]["count"]["type"] == TYPE
    config["tasks"]["count"]["type"] = "no_such_module_for_hfmtl:NumberCountTask"
    broken = untrained.with_name("broken")
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "model.safetensors").write_bytes((untrained / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="module 'no_such_module_for_hfmtl' cannot be imported") as err:
        transformers.AutoModel.from_pretrained(broken)
    assert "\n" not in str(err.value) and "PYTHONPATH" in str(err.value)
    with pytest.raises(ConfigError, match=f"module {NumberCountTask.__module__!r} has no 'NoSuchTask'"):
        get_task_class(f"{NumberCountTask.__module__}:NoSuchTask")
    with pytest.raises(ConfigError, match="is not a subclass of hfmtl.tasks.Task"):
        get_task_class(f"{NumberCountTask.__module__}:TokenCountHead")
    with pytest.raises(ConfigError, match="is abstract: it does not implement build_head, collate, compute_loss"):
        get_task_class("hfmtl.tasks:Task")


@pytest.mark.slow
def test_the_predictor_predicts_it_as_evaluation_scored_it(trained):
    out = trained["out"]
    predictor = hfmtl.Predictor.from_pretrained(out, device="cpu", batch_size=7)
    assert predictor.tasks == {"count": TYPE} and predictor.describe_fields("count") == "text"
    rows = trained["validation"]
    results = predictor.predict("count", [{"text": row["text"]} for row in rows])
    expected = np.array([r["expected"] for r in results])
    assert all(r["count"] == round(r["expected"]) for r in results)
    # the same texts, the same truncation: the mean absolute error evaluation logged for the saved weights
    mae = np.abs(expected - np.array([row["count"] for row in rows])).mean()
    final = json.loads((out / "metrics.json").read_text())["history"][-1]["eval/count/mae"]
    assert mae == pytest.approx(final, abs=1e-5)
    # one input, by hand: the summed token probabilities of the model's own logits
    text = rows[0]["text"]
    model, tokenizer = predictor.model, predictor.tokenizer
    with torch.no_grad():
        logits = model(task="count", **tokenizer(text, truncation=True, max_length=64, return_tensors="pt")).logits
    assert predictor.predict("count", text)["expected"] == pytest.approx(torch.sigmoid(logits).sum().item(), abs=1e-5)
    with pytest.raises(HfmtlError, match=r"task 'count', input 0: missing field 'text'"):
        predictor.predict("count", {"sentence": text})
    assert model_info(str(out))["tasks"]["count"]["inputs"] == "text"  # `hfmtl info`


@pytest.mark.slow
def test_the_training_writes_its_card(trained, capsys):
    out = trained["out"]
    text = (out / "README.md").read_text()
    assert text == str(build_model_card(out))
    card = build_model_card(out, repo_id="me/counts")
    assert check_card_metadata(str(card)) == []
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.tags == ["hfmtl", TYPE]
    assert card.data.eval_results[0].task_type == "text-classification"
    final = json.loads((out / "metrics.json").read_text())["history"][-1]["eval/count/mae"]
    assert f"| `count` | {TYPE} | how many numbers the text holds | mae ↓ {final:.4f} |" in card.text
    assert "hfmtl export" not in card.text  # no standard head: no export example
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert 'inputs = tokenizer("She bought 3 apples and 12 pears.", return_tensors="pt")' in code
    exec(compile(code, "<card>", "exec"), {})
    assert re.match(r"count \d+\.\d+$", capsys.readouterr().out.strip())


def test_its_export_is_refused_in_one_line(untrained, tmp_path):
    with pytest.raises(HfmtlError, match="no standard transformers head") as err:
        export_model_dir(untrained, "count", tmp_path / "export")
    assert str(err.value) == (
        f"cannot export task 'count' of type {TYPE!r}: it has no standard transformers head to export to"
    )
    assert not (tmp_path / "export").exists()


@pytest.mark.slow
def test_analysis_extracts_one_row_per_text_with_its_count(trained):
    tokenizer = transformers.AutoTokenizer.from_pretrained(trained["out"])
    task = hfmtl.build_task("count", hfmtl.tasks.task_config_from_dict("count", trained["task_config"]))
    data = prepare_task_data(task, tokenizer, 64, contextlib.nullcontext, train=False)
    model = transformers.AutoModel.from_pretrained(trained["out"])
    features = extract_features(model, task, data.eval_features, tokenizer)
    assert features.unit == "example" and features.regression
    assert features.features.shape == (48, 64)
    assert features.labels.tolist() == [row["count"] for row in trained["validation"]]
    assert np.isfinite(logme(features.features, features.labels, regression=True))


def test_a_type_that_overrides_nothing_gets_clear_refusals():
    spec = {"type": "elsewhere:Bare", "num_labels": 3}
    for ask, reason in (
        (lambda: Task.predictor_class(), "has no predictor"),
        (lambda: Task.standard_head(spec), "no standard transformers head"),
        (lambda: Task.feature_unit(), "no label per example, per token or per choice"),
    ):
        with pytest.raises(Unsupported, match=reason):
            ask()
    assert Task.check_mixed_batch(spec) is None
    assert Task.usage_snippet("t", spec, {}) is None and Task.pipeline_tag == "other"
    assert Task.describe_predictions(spec) == "3 outputs per input"
    assert NumberCountTask.type_name == TYPE  # named by its path: what get_task_class imports
    assert get_task_class(TYPE) is NumberCountTask


def test_the_task_modules_docstring_examples_run():
    import doctest

    import hfmtl.tasks.base as base
    import hfmtl.tasks.capabilities as capabilities
    import hfmtl.tasks.heads as heads

    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    examples = 0
    for module in (hfmtl.tasks, base, capabilities, heads):
        for test in finder.find(module):
            runner.run(test)
            examples += len(test.examples)
    assert runner.failures == 0 and examples >= 8
