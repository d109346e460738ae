"""Token classification (NER, POS, chunking): one tag per word, aligned to sub-words.

The first sub-token of each word carries the word's tag; the other sub-tokens and special tokens get
-100 and are ignored by the loss and the metrics (or, with `label_all_tokens`, every sub-token of a word
carries its tag for training; evaluation still reads the first sub-token only). Tags may be strings or
integer ids; names come from `label_names` or the dataset's `Sequence(ClassLabel)` feature.

Predictions (`hfmtl.Predictor`): an input is a raw string (a mapping with ``text``, or the string
itself), split here into words with their character offsets, or pre-split words (a mapping with the
task's ``tokens_column``, or a list of strings inside the list of inputs); pre-split words are joined by
single spaces to form the text the offsets point into, as transformers' pipeline does. Each word is
tagged from its first sub-token; a text longer than ``max_length`` is split into overlapping windows,
and each word takes the tags of the window where it has the most context on both sides. Words are then
grouped like the pipeline's ``aggregation_strategy="simple"``: for IOB/IOBES tags, ``B-X I-X ...``
becomes one entity ``X`` ("O" words are no entity); other tag sets (POS) give one entry per word. Each
entity is ``{"entity_group", "score", "word", "start", "end"}``: ``text[start:end] == word``, and
``score`` is the mean of its words' probabilities.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForTokenClassification

from ..errors import DataError
from .base import Task, TaskConfig
from .capabilities import FeatureUnit, StandardHead, UsageSnippet
from .heads import TokenHead
from .labels import IGNORE_INDEX, check_label_kinds, check_labels_present, label_to_id, resolve_label_names
from .metrics import compute_metric
from .prediction import (
    InputError,
    PredictOptions,
    TaskPredictor,
    features_by_item,
    first_subtoken_logits,
    softmax,
    split_words,
)
from .registry import register_task

_IOB_TAG = re.compile(r"^(O|[BIES]-.+)$")
RAW_TEXT_FIELD = "text"  # the input field of a raw text, whatever the task's tokens_column is


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
    pipeline_tag = "token-classification"

    def required_columns(self) -> list[str]:
        return [self.config.tokens_column, self.config.tags_column]

    def text_columns(self) -> dict[str, bool]:
        return {self.config.tokens_column: True}

    def setup(self, splits: dict[str, Any]) -> None:
        super().setup(splits)
        c = self.config
        check_labels_present(self, splits, c.tags_column)
        check_label_kinds(self, splits, c.tags_column, is_list=True)
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

    @classmethod
    def predictor_class(cls) -> type[TaskPredictor]:
        return TokenClassificationPredictor

    @classmethod
    def standard_head(cls, spec: dict[str, Any]) -> StandardHead:
        return StandardHead(
            AutoModelForTokenClassification, "token", token_module="classifier", pipeline="token-classification"
        )

    @classmethod
    def feature_unit(cls) -> FeatureUnit:
        return FeatureUnit("token")

    @classmethod
    def usage_snippet(cls, task_name: str, spec: dict[str, Any], section: dict[str, Any]) -> UsageSnippet:
        task = repr(task_name)
        return UsageSnippet(
            (
                'inputs = tokenizer("George Washington lived in Virginia.", return_tensors="pt")',
                f"tags = model(task={task}, **inputs).logits.argmax(-1)[0].tolist()  # one tag per sub-word",
                'tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])',
                f'print({task}, [(t, model.config.tasks[{task}]["id2label"][i]) for t, i in zip(tokens, tags)])',
            )
        )


# --- predictions ------------------------------------------------------------------------------------


class TokenClassificationPredictor(TaskPredictor):
    """A list of entities per input (see the module docstring)."""

    default_fields = {"tokens_column": "tokens"}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.tokenizer is not None and not getattr(self.tokenizer, "is_fast", False):
            raise DataError(f"task {self.name!r}: token classification needs a fast tokenizer (for word_ids)")
        # the task's own test of the tag scheme (it reads label_names, set by `setup` in training)
        self.task.label_names = [self.spec["id2label"][i] for i in range(self.spec["num_labels"])]
        self.is_iob = self.task.is_iob
        special = self.tokenizer.num_special_tokens_to_add(pair=False) if self.tokenizer is not None else 0
        # tokens two consecutive windows share: a quarter of the window
        self.stride = max(0, (self.max_length - special) // 4)

    @property
    def fields(self) -> list[str]:
        return list(dict.fromkeys((self.config.tokens_column, RAW_TEXT_FIELD)))  # either one

    def describe_fields(self) -> str:
        if self.config.tokens_column == RAW_TEXT_FIELD:
            return f"{RAW_TEXT_FIELD} (a string, or a list of words)"
        return f"{self.config.tokens_column} (a list of words) or {RAW_TEXT_FIELD} (a string)"

    def parse_mapping(self, item: Mapping[str, Any]) -> dict[str, Any]:
        for name in dict.fromkeys((self.config.tokens_column, RAW_TEXT_FIELD)):
            if name in item and item[name] is not None:
                value = item[name]
                return self._words(value, name) if isinstance(value, str) else self._words(value, name, split=True)
        raise InputError(
            f"missing field {self.config.tokens_column!r} (task {self.name!r} reads {self.describe_fields()})"
        )

    def parse_shorthand(self, item: Any) -> dict[str, Any]:
        if isinstance(item, str):
            return self._words(item, RAW_TEXT_FIELD)
        if isinstance(item, list):
            return self._words(item, self.config.tokens_column, split=True)
        return super().parse_shorthand(item)

    def _words(self, value: Any, field: str, split: bool = False) -> dict[str, Any]:
        if not split:
            words, spans = split_words(value)
            return {"text": value, "words": words, "spans": spans}
        words = self._get({field: value}, field, "list")
        spans, start = [], 0
        for word in words:
            spans.append((start, start + len(word)))
            start += len(word) + 1
        return {"text": " ".join(words), "words": words, "spans": spans}

    def encode(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        encoded = self.tokenizer(
            [it["words"] for it in items],
            is_split_into_words=True,
            truncation=True,
            max_length=self.max_length,
            stride=self.stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        sample_map = encoded.pop("overflow_to_sample_mapping")
        offsets = encoded.pop("offset_mapping")
        features = []
        for i, item_index in enumerate(sample_map):
            feature = {key: values[i] for key, values in encoded.items()}
            feature.update(item=item_index, word_ids=encoded.word_ids(i), offsets=offsets[i])
            features.append(feature)
        return features

    def decode(self, items, features, logits, options: PredictOptions) -> list[list[dict[str, Any]]]:
        id2label = self.spec["id2label"]
        results = []
        for item, windows in zip(items, features_by_item(features, logits, len(items))):
            tags: list[tuple[str, float] | None] = [None] * len(item["words"])
            for word, row in first_subtoken_logits(windows).items():
                probs = softmax(row)
                best = int(probs.argmax())
                tags[word] = (id2label[best], float(probs[best]))
            results.append(self._group(item, tags))
        return results

    def _group(self, item: dict[str, Any], tags: list[tuple[str, float] | None]) -> list[dict[str, Any]]:
        groups: list[tuple[str, list[int]]] = []  # (entity type, word indices)
        open_group = False
        for word, tag in enumerate(tags):
            if tag is None:  # a word the tokenizer gave no token (e.g. a lone control character)
                open_group = False
                continue
            label = tag[0]
            if not self.is_iob:
                groups.append((label, [word]))
                continue
            if label == "O":
                open_group = False
                continue
            prefix, entity = label.split("-", 1)
            if prefix in ("I", "E") and open_group and groups[-1][0] == entity:
                groups[-1][1].append(word)
            else:
                groups.append((entity, [word]))
            open_group = prefix in ("B", "I")
        entities = []
        for entity, words in groups:
            start, end = item["spans"][words[0]][0], item["spans"][words[-1]][1]
            entities.append(
                {
                    "entity_group": entity,
                    "score": float(np.mean([tags[w][1] for w in words])),
                    "word": item["text"][start:end],
                    "start": start,
                    "end": end,
                }
            )
        return entities
