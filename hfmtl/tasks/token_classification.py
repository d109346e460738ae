"""Token classification (NER, POS, chunking): one tag per word, aligned to sub-words.

The first sub-token of each word carries the word's tag; the other sub-tokens and special tokens get
-100 and are ignored by the loss and the metrics (or, with `label_all_tokens`, every sub-token of a word
carries its tag for training; evaluation still reads the first sub-token only). Tags may be strings or
integer ids; names come from `label_names` or the dataset's `Sequence(ClassLabel)` feature.

Example config::

    ner:
      type: token_classification
      data_files: {train: ../shared/data/conll2003/train.jsonl, validation: ...}
      tokens_column: tokens
      tags_column: ner_tags
      label_names: [O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC, B-MISC, I-MISC]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DataError
from . import register_task
from .base import Task, TaskConfig, TokenHead, label_to_id, resolve_label_names
from .metrics import compute_metric

IGNORE_INDEX = -100
_IOB_TAG = re.compile(r"^(O|[BIES]-.+)$")


@dataclass
class TokenClassificationConfig(TaskConfig):
    tokens_column: str = field(default="tokens", metadata={"help": "Column with the list of words."})
    tags_column: str = field(default="ner_tags", metadata={"help": "Column with one tag per word."})
    label_names: list[str] | None = field(default=None, metadata={"help": "Tag names in id order."})
    num_labels: int | None = field(default=None, metadata={"help": "Needed for unnamed integer tags only."})
    label_all_tokens: bool = field(
        default=False, metadata={"help": "Train on every sub-token of a word, not just the first."}
    )


@register_task("token_classification")
class TokenClassificationTask(Task):
    """One tag per word, predicted from the word's first sub-token."""

    config_class = TokenClassificationConfig
    config: TokenClassificationConfig

    def required_columns(self) -> list[str]:
        return [self.config.tokens_column, self.config.tags_column]

    def setup(self, splits: dict[str, Any]) -> None:
        super().setup(splits)
        c = self.config
        self.label_names = resolve_label_names(
            self, splits, c.tags_column, c.label_names, c.num_labels, multi_label=True
        )
        self.label2id = {name: i for i, name in enumerate(self.label_names)}

    @property
    def is_iob(self) -> bool:
        """Whether the tags are an IOB scheme, which seqeval scores by entity."""
        return all(_IOB_TAG.match(name) for name in self.label_names)

    @property
    def default_metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("seqeval",) if self.is_iob else ("accuracy",)

    def default_main_metric(self) -> str:
        return "f1" if "seqeval" in self.metric_names else self.metric_names[0]

    def head_spec(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "num_labels": len(self.label_names),
            "id2label": dict(enumerate(self.label_names)),
        }

    def preprocess(self, examples: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(f"task {self.name!r}: token classification needs a fast tokenizer (for word_ids)")
        words, tags = examples[self.config.tokens_column], examples[self.config.tags_column]
        features = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        all_labels = []
        for row, row_tags in enumerate(tags):
            if len(row_tags) != len(words[row]):
                raise DataError(f"task {self.name!r}: an example has {len(words[row])} words but {len(row_tags)} tags")
            tag_ids = [label_to_id(self, t, self.label2id) for t in row_tags]
            labels, previous = [], None
            for word_id in features.word_ids(row):
                if word_id is None:
                    labels.append(IGNORE_INDEX)
                elif word_id != previous or self.config.label_all_tokens:
                    labels.append(tag_ids[word_id])
                else:
                    labels.append(IGNORE_INDEX)
                previous = word_id
            all_labels.append(labels)
        features["labels"] = all_labels
        return features

    def preprocess_eval(self, examples: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
        # evaluation scores each word once, at its first sub-token, whatever the training option
        saved, self.config.label_all_tokens = self.config.label_all_tokens, False
        try:
            return self.preprocess(examples, tokenizer, max_length)
        finally:
            self.config.label_all_tokens = saved

    def collate(self, features: list[dict[str, Any]], tokenizer) -> dict[str, torch.Tensor]:
        labels = [f["labels"] for f in features]
        # labels differ in length: padded below with -100, not by the tokenizer
        batch = self.pad_features(features, tokenizer, with_labels=False)
        width = batch["input_ids"].shape[1]
        padded = torch.full((len(labels), width), IGNORE_INDEX, dtype=torch.long)
        right = tokenizer.padding_side == "right"
        for i, row in enumerate(labels):
            row_tensor = torch.tensor(row, dtype=torch.long)
            if right:
                padded[i, : len(row)] = row_tensor
            else:
                padded[i, width - len(row) :] = row_tensor
        batch["labels"] = padded
        return batch

    @staticmethod
    def build_head(spec: dict[str, Any], hidden_size: int, dropout: float, pooling: str) -> nn.Module:
        return TokenHead(hidden_size, spec["num_labels"], dropout)

    @staticmethod
    def compute_loss(spec: dict[str, Any], logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)

    def eval_outputs(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"predictions": logits.argmax(dim=-1), "labels": batch["labels"]}

    def compute_metrics(self, outputs, eval_features, eval_examples) -> dict[str, float]:
        names = self.label_names
        pred_tags: list[list[str]] = []
        gold_tags: list[list[str]] = []
        for out in outputs:
            for pred_row, gold_row in zip(out["predictions"], out["labels"]):
                keep = gold_row != IGNORE_INDEX
                pred_tags.append([names[i] for i in pred_row[keep]])
                gold_tags.append([names[i] for i in gold_row[keep]])
        results: dict[str, float] = {}
        for metric_name in self.metric_names:
            if metric_name == "seqeval" or metric_name.startswith("evaluate:"):
                results.update(compute_metric(metric_name, pred_tags, gold_tags))
            else:  # token-level metrics (accuracy, f1...) over the flat list of scored tokens
                flat_pred = np.array([self.label2id[t] for row in pred_tags for t in row])
                flat_gold = np.array([self.label2id[t] for row in gold_tags for t in row])
                average = "macro" if metric_name in ("f1", "precision", "recall") else None
                results.update(compute_metric(metric_name, flat_pred, flat_gold, average=average))
        return results
