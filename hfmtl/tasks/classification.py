"""Sequence-level tasks on a sentence or a sentence pair: classification (multi-class or multi-label)
and regression (e.g. STS-B similarity scores).

Predictions (`hfmtl.Predictor`): an input is a mapping with the task's ``text_column`` (and
``text_pair_column``), a string, or a ``(text, text_pair)`` tuple. Results: ``{"label", "score"}``
(softmax; ``scores`` too on request), ``{"labels": [{"label", "score"}, ...]}`` for multi-label (sigmoid
per label, those above the threshold), ``{"value"}`` for regression.

Example config::

    rte:
      type: classification
      data_files: {train: ../shared/data/rte/train.jsonl, validation: ../shared/data/rte/validation.jsonl}
      text_column: sentence1
      text_pair_column: sentence2
      label_names: [entailment, not_entailment]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForSequenceClassification

from .base import Task, TaskConfig
from .capabilities import FeatureUnit, StandardHead, UsageSnippet
from .heads import PooledHead
from .labels import (
    check_label_kinds,
    check_labels_present,
    check_numeric_targets,
    label_to_id,
    resolve_label_names,
)
from .prediction import InputError, PredictOptions, TaskPredictor, softmax
from .registry import register_task


@dataclass
class SequenceTaskConfig(TaskConfig):
    text_column: str = field(default="sentence", metadata={"help": "Column with the (first) text."})
    text_pair_column: str | None = field(
        default=None, metadata={"help": "Column with the second text of a pair (null: single sentence)."}
    )
    label_column: str = field(
        default="label",
        metadata={"help": "Column with the label: a class name or id (a list with multi_label), or a number."},
    )


@dataclass
class ClassificationConfig(SequenceTaskConfig):
    label_names: list[str] | None = field(
        default=None,
        metadata={"help": "Class names in id order; else from dataset features or string labels."},
    )
    num_labels: int | None = field(default=None, metadata={"help": "Needed for unnamed integer labels only."})
    multi_label: bool = field(default=False, metadata={"help": "Each example has a list of labels (sigmoid + BCE)."})


@dataclass
class RegressionConfig(SequenceTaskConfig):
    pass


class _SequenceTask(Task):
    """Shared text handling: one text or a pair, truncated to max_length, padded per batch."""

    config: SequenceTaskConfig
    # regression is a text-classification head with one output, in transformers as on the Hub
    pipeline_tag = "text-classification"

    def required_columns(self) -> list[str]:
        columns = [self.config.text_column, self.config.label_column]
        if self.config.text_pair_column:
            columns.insert(1, self.config.text_pair_column)
        return columns

    def text_columns(self) -> dict[str, bool]:
        pair = self.config.text_pair_column
        return {self.config.text_column: False, **({pair: False} if pair else {})}

    def _tokenize(self, examples: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
        pairs = examples[self.config.text_pair_column] if self.config.text_pair_column else None
        return tokenizer(examples[self.config.text_column], pairs, truncation=True, max_length=max_length)

    def collate(self, features: list[dict[str, Any]], tokenizer) -> dict[str, torch.Tensor]:
        return self.pad_features(features, tokenizer)

    @staticmethod
    def build_head(spec: dict[str, Any], hidden_size: int, dropout: float, pooling: str) -> nn.Module:
        return PooledHead(hidden_size, spec["num_labels"], dropout, pooling)

    @classmethod
    def feature_unit(cls) -> FeatureUnit:
        return FeatureUnit("example")

    @classmethod
    def _snippet(cls, section: dict[str, Any], *lines: str) -> UsageSnippet:
        """`lines` (with ``{inputs}``: the shared encoded input) after the input they need."""
        if section.get("text_pair_column") is not None:
            inputs, text = "pair", '"A man is playing a guitar.", "Someone is making music."'
        else:
            inputs, text = "sentence", '"A moving film."'
        setup = f'{inputs} = tokenizer({text}, return_tensors="pt")'
        return UsageSnippet(lines=tuple(line.replace("{inputs}", inputs) for line in lines), setup=(setup,))


@register_task("classification")
class ClassificationTask(_SequenceTask):
    """Single- or multi-label classification of a sentence or a sentence pair."""

    config_class = ClassificationConfig
    config: ClassificationConfig
    default_metrics = ("accuracy", "f1")

    def setup(self, splits: dict[str, Any]) -> None:
        super().setup(splits)
        c = self.config
        check_labels_present(self, splits, c.label_column)
        if not c.multi_label:
            check_label_kinds(self, splits, c.label_column)
        self.label_names = resolve_label_names(self, splits, c.label_column, c.label_names, c.num_labels, c.multi_label)
        self.label2id = {name: i for i, name in enumerate(self.label_names)}

    def head_spec(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "num_labels": len(self.label_names),
            "id2label": dict(enumerate(self.label_names)),
            "problem_type": "multi_label_classification" if self.config.multi_label else "single_label_classification",
        }

    def preprocess(self, examples: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
        features = self._tokenize(examples, tokenizer, max_length)
        labels = examples[self.config.label_column]
        if self.config.multi_label:
            rows = []
            for row in labels:
                hot = [0.0] * len(self.label2id)
                for value in row:
                    hot[label_to_id(self, value, self.label2id)] = 1.0
                rows.append(hot)
            features["labels"] = rows
        else:
            features["labels"] = [label_to_id(self, value, self.label2id) for value in labels]
        return features

    @staticmethod
    def compute_loss(spec: dict[str, Any], logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if spec.get("problem_type") == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels)

    @classmethod
    def predictor_class(cls) -> type[TaskPredictor]:
        return ClassificationPredictor

    @classmethod
    def standard_head(cls, spec: dict[str, Any]) -> StandardHead:
        return StandardHead(
            AutoModelForSequenceClassification,
            "sequence",
            problem_type="single_label_classification",
            pipeline="text-classification",
        )

    @classmethod
    def usage_snippet(cls, task_name: str, spec: dict[str, Any], section: dict[str, Any]) -> UsageSnippet:
        task = repr(task_name)
        if spec.get("problem_type") == "multi_label_classification":
            return cls._snippet(
                section,
                f"probabilities = model(task={task}, **{{inputs}}).logits.sigmoid()[0]",
                f'print({task}, [label for i, label in model.config.tasks[{task}]["id2label"].items() '
                "if probabilities[i] > 0.5])",
            )
        return cls._snippet(
            section,
            f"logits = model(task={task}, **{{inputs}}).logits",
            f'print({task}, model.config.tasks[{task}]["id2label"][logits.argmax(-1).item()])',
        )

    def eval_outputs(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.config.multi_label:
            return {"predictions": (logits > 0).long(), "labels": batch["labels"].long()}
        return {"predictions": logits.argmax(dim=-1), "labels": batch["labels"]}

    def compute_metrics(self, outputs, eval_features, eval_examples) -> dict[str, float]:
        predictions = np.concatenate([o["predictions"] for o in outputs])
        labels = np.concatenate([o["labels"] for o in outputs])
        # two classes: binary F1 of class 1 (GLUE's convention); more: macro; multi-label: micro.
        # Decided by the label set, not by the labels an eval slice happens to contain.
        if self.config.multi_label:
            average = "micro"
        else:
            average = "binary" if len(self.label_names) == 2 else "macro"
        return self._compute_named_metrics(predictions, labels, average=average)


@register_task("regression")
class RegressionTask(_SequenceTask):
    """One real-valued score per sentence or pair (MSE loss), e.g. STS-B similarity."""

    config_class = RegressionConfig
    default_metrics = ("pearson", "spearman")

    def setup(self, splits: dict[str, Any]) -> None:
        super().setup(splits)
        check_numeric_targets(self, splits, self.config.label_column)

    def head_spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "num_labels": 1, "problem_type": "regression"}

    def preprocess(self, examples: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
        features = self._tokenize(examples, tokenizer, max_length)
        features["labels"] = [float(v) for v in examples[self.config.label_column]]
        return features

    @staticmethod
    def compute_loss(spec: dict[str, Any], logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())

    def eval_outputs(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"predictions": logits.float().squeeze(-1), "labels": batch["labels"].float()}

    @classmethod
    def predictor_class(cls) -> type[TaskPredictor]:
        return RegressionPredictor

    @classmethod
    def describe_predictions(cls, spec: dict[str, Any]) -> str:
        return "a score"

    @classmethod
    def feature_unit(cls) -> FeatureUnit:
        return FeatureUnit("example", regression=True)

    @classmethod
    def standard_head(cls, spec: dict[str, Any]) -> StandardHead:
        return StandardHead(
            AutoModelForSequenceClassification, "sequence", problem_type="regression", pipeline="text-classification"
        )

    @classmethod
    def usage_snippet(cls, task_name: str, spec: dict[str, Any], section: dict[str, Any]) -> UsageSnippet:
        return cls._snippet(section, f"print({task_name!r}, model(task={task_name!r}, **{{inputs}}).logits.item())")

    def compute_metrics(self, outputs, eval_features, eval_examples) -> dict[str, float]:
        predictions = np.concatenate([o["predictions"] for o in outputs])
        labels = np.concatenate([o["labels"] for o in outputs])
        return self._compute_named_metrics(predictions, labels)


# --- predictions ------------------------------------------------------------------------------------


class _SequencePredictor(TaskPredictor):
    default_fields = {"text_column": "text", "text_pair_column": "text_pair"}

    @property
    def fields(self) -> list[str]:
        pair = self.config.text_pair_column
        return [self.config.text_column, pair] if pair else [self.config.text_column]

    @property
    def optional_fields(self) -> list[str]:
        pair = self.config.text_pair_column
        return [pair] if pair and not self.strict else []

    def parse_mapping(self, item: Mapping[str, Any]) -> dict[str, Any]:
        text = self._get(item, self.config.text_column, "str")
        pair = None
        if self.config.text_pair_column:
            pair = self._get(item, self.config.text_pair_column, "str", optional=not self.strict)
        return {"text": text, "text_pair": pair}

    def parse_shorthand(self, item: Any) -> dict[str, Any]:
        if isinstance(item, str):
            return self.parse_mapping({self.config.text_column: item})
        if isinstance(item, tuple) and len(item) == 2:
            if not self.config.text_pair_column:
                raise InputError(f"task {self.name!r} reads one text, not a pair")
            return self.parse_mapping({self.config.text_column: item[0], self.config.text_pair_column: item[1]})
        return super().parse_shorthand(item)

    def encode(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # as training encodes (`_SequenceTask._tokenize`): truncation=True, i.e. longest_first on pairs;
        # single texts and pairs cannot share one tokenizer call
        features: list[dict[str, Any]] = [{} for _ in items]
        for with_pair in (False, True):
            index = [i for i, it in enumerate(items) if (it["text_pair"] is not None) == with_pair]
            if not index:
                continue
            texts = [items[i]["text"] for i in index]
            pairs = [items[i]["text_pair"] for i in index] if with_pair else None
            encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
            for row, i in enumerate(index):
                features[i] = {key: values[row] for key, values in encoded.items()}
                features[i]["item"] = i
        return features


class ClassificationPredictor(_SequencePredictor):
    """``{"label", "score"}``, or ``{"labels": [...]}`` for a multi-label head."""

    def decode(self, items, features, logits, options: PredictOptions) -> list[dict[str, Any]]:
        id2label = self.spec["id2label"]
        multi_label = self.spec.get("problem_type") == "multi_label_classification"
        results = []
        for row in logits:
            probs = 1 / (1 + np.exp(-row.astype(np.float64))) if multi_label else softmax(row)
            ranked = [{"label": id2label[i], "score": float(probs[i])} for i in np.argsort(-probs, kind="stable")]
            if multi_label:
                # strictly above: at 0.5 this is logit > 0, the rule evaluation scores
                result: dict[str, Any] = {"labels": [r for r in ranked if r["score"] > options.threshold]}
            else:
                result = dict(ranked[0])
            if options.return_all_scores or options.top_k:
                result["scores"] = ranked if options.return_all_scores else ranked[: options.top_k]
            results.append(result)
        return results


class RegressionPredictor(_SequencePredictor):
    """``{"value": float}``."""

    def decode(self, items, features, logits, options: PredictOptions) -> list[dict[str, Any]]:
        return [{"value": float(row[0])} for row in logits]
