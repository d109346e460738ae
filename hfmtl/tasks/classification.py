"""Sequence-level tasks on a sentence or a sentence pair: classification (multi-class or multi-label)
and regression (e.g. STS-B similarity scores).

Example config::

    rte:
      type: classification
      data_files: {train: ../shared/data/rte/train.jsonl, validation: ../shared/data/rte/validation.jsonl}
      text_column: sentence1
      text_pair_column: sentence2
      label_names: [entailment, not_entailment]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import register_task
from .base import PooledHead, Task, TaskConfig, label_to_id, resolve_label_names


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

    def required_columns(self) -> list[str]:
        columns = [self.config.text_column, self.config.label_column]
        if self.config.text_pair_column:
            columns.insert(1, self.config.text_pair_column)
        return columns

    def _tokenize(self, examples: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
        pairs = examples[self.config.text_pair_column] if self.config.text_pair_column else None
        return tokenizer(examples[self.config.text_column], pairs, truncation=True, max_length=max_length)

    def collate(self, features: list[dict[str, Any]], tokenizer) -> dict[str, torch.Tensor]:
        return self.pad_features(features, tokenizer)

    @staticmethod
    def build_head(spec: dict[str, Any], hidden_size: int, dropout: float, pooling: str) -> nn.Module:
        return PooledHead(hidden_size, spec["num_labels"], dropout, pooling)


@register_task("classification")
class ClassificationTask(_SequenceTask):
    """Single- or multi-label classification of a sentence or a sentence pair."""

    config_class = ClassificationConfig
    config: ClassificationConfig
    default_metrics = ("accuracy", "f1")

    def setup(self, splits: dict[str, Any]) -> None:
        super().setup(splits)
        c = self.config
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

    def compute_metrics(self, outputs, eval_features, eval_examples) -> dict[str, float]:
        predictions = np.concatenate([o["predictions"] for o in outputs])
        labels = np.concatenate([o["labels"] for o in outputs])
        return self._compute_named_metrics(predictions, labels)
