"""Multiple choice (CommonsenseQA, ARC, COPA...): score each (question, choice) pair, softmax over choices.

Each choice is encoded as the pair ``(context + question, choice)``; the head maps each pair to one
score. The number of choices may vary between examples (ARC has 3 to 5): a batch pads to its widest
example and `choice_mask` hides the padded choices from the softmax.

Predictions (`hfmtl.Predictor`): an input is a mapping with the task's ``question_column``,
``choices_column`` (a list of strings, any number per input) and ``context_column`` if the task has
one; encoding and padding are the task's own `preprocess` / `collate`, as in training. Result:
``{"choice": index, "probabilities": [one per choice]}``.

Example config::

    copa:
      type: multiple_choice
      data_files: {train: ../shared/data/copa/train.jsonl, validation: ../shared/data/copa/validation.jsonl}
      context_column: premise
      question_column: question
      choices_column: choices
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForMultipleChoice

from ..errors import DataError
from .base import Task, TaskConfig
from .capabilities import FeatureUnit, StandardHead, Unsupported, UsageSnippet
from .heads import PooledHead
from .labels import check_labels_present
from .prediction import InputError, PredictOptions, TaskPredictor, softmax
from .registry import register_task


@dataclass
class MultipleChoiceConfig(TaskConfig):
    question_column: str = field(default="question", metadata={"help": "Column with the question (or the stem)."})
    choices_column: str = field(default="choices", metadata={"help": "Column with the list of choice texts."})
    context_column: str | None = field(
        default=None, metadata={"help": "Optional text put before the question (e.g. COPA's premise)."}
    )
    label_column: str = field(default="label", metadata={"help": "Index of the right choice."})


@register_task("multiple_choice")
class MultipleChoiceTask(Task):
    """Pick one of N choices; the head scores each (question, choice) pair."""

    config_class = MultipleChoiceConfig
    config: MultipleChoiceConfig
    default_metrics = ("accuracy",)
    pipeline_tag = "multiple-choice"

    def required_columns(self) -> list[str]:
        c = self.config
        columns = [c.question_column, c.choices_column, c.label_column]
        return [c.context_column, *columns] if c.context_column else columns

    def text_columns(self) -> dict[str, bool]:
        c = self.config
        texts = {c.question_column: False, c.choices_column: True}
        return {c.context_column: False, **texts} if c.context_column else texts

    def setup(self, splits: dict[str, Any]) -> None:
        super().setup(splits)
        check_labels_present(self, splits, self.config.label_column)

    def head_spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "num_labels": 1}

    def preprocess(self, examples: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
        c = self.config
        firsts, seconds, sizes = [], [], []
        for i, question in enumerate(examples[c.question_column]):
            context = examples[c.context_column][i] if c.context_column else ""
            choices = examples[c.choices_column][i]
            label = examples[c.label_column][i]
            if not isinstance(label, int) or not 0 <= label < len(choices):
                raise DataError(f"task {self.name!r}: label {label!r} is not an index into the {len(choices)} choices")
            first = f"{context} {question}".strip()
            firsts.extend([first] * len(choices))
            seconds.extend(choices)
            sizes.append(len(choices))
        flat = tokenizer(firsts, seconds, truncation=True, max_length=max_length)
        # un-flatten: one list of per-choice token lists per example
        features: dict[str, list] = {k: [] for k in flat}
        start = 0
        for size in sizes:
            for key, values in flat.items():
                features[key].append(values[start : start + size])
            start += size
        features["labels"] = list(examples[c.label_column])
        return features

    def collate(self, features: list[dict[str, Any]], tokenizer) -> dict[str, torch.Tensor]:
        # Written here because transformers ships no multiple-choice collator in the library (only in
        # its examples): flatten the choices, pad them together, reshape to (batch, choices, length).
        num_choices = max(len(f["input_ids"]) for f in features)
        keys = [k for k in self.model_input_names if k in features[0]]
        flat, mask = [], []
        for f in features:
            n = len(f["input_ids"])
            for j in range(num_choices):
                # a padded choice repeats the first real one (a valid input) and is masked out
                flat.append({k: f[k][j if j < n else 0] for k in keys})
                mask.append(j < n)
        batch = tokenizer.pad(flat, return_tensors="pt")
        batch = {k: v.view(len(features), num_choices, -1) for k, v in batch.items()}
        batch["choice_mask"] = torch.tensor(mask).view(len(features), num_choices)
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch

    @staticmethod
    def build_head(spec: dict[str, Any], hidden_size: int, dropout: float, pooling: str) -> nn.Module:
        return PooledHead(hidden_size, 1, dropout, pooling)

    @staticmethod
    def compute_loss(spec: dict[str, Any], logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)

    def eval_outputs(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"predictions": logits.argmax(dim=-1), "labels": batch["labels"]}

    def compute_metrics(self, outputs, eval_features, eval_examples) -> dict[str, float]:
        predictions = np.concatenate([o["predictions"] for o in outputs])
        labels = np.concatenate([o["labels"] for o in outputs])
        return self._compute_named_metrics(predictions, labels)

    @classmethod
    def predictor_class(cls) -> type[TaskPredictor]:
        return MultipleChoicePredictor

    @classmethod
    def describe_predictions(cls, spec: dict[str, Any]) -> str:
        return "one of the given choices"

    @classmethod
    def standard_head(cls, spec: dict[str, Any]) -> StandardHead:
        return StandardHead(AutoModelForMultipleChoice, "choice")  # transformers has no multiple-choice pipeline

    @classmethod
    def feature_unit(cls) -> FeatureUnit:
        return FeatureUnit("choice")

    @classmethod
    def check_mixed_batch(cls, spec: dict[str, Any]) -> None:
        raise Unsupported("is multiple choice (its inputs have a choices dimension)")

    @classmethod
    def check_input_group(cls) -> None:
        raise Unsupported("is multiple choice (each row is encoded once per choice)")

    @classmethod
    def usage_snippet(cls, task_name: str, spec: dict[str, Any], section: dict[str, Any]) -> UsageSnippet:
        task = repr(task_name)
        return UsageSnippet(
            (
                'question = "The man broke his toe. What was the cause?"',
                'choices = ["He dropped a hammer on his foot.", "He got a hole in his sock."]',
                'pairs = tokenizer([question] * len(choices), choices, padding=True, return_tensors="pt")',
                f"scores = model(task={task}, **{{k: v.unsqueeze(0) for k, v in pairs.items()}}).logits  # (1, choices)",
                f"print({task}, choices[scores.argmax(-1).item()])",
            )
        )


# --- predictions ------------------------------------------------------------------------------------


class MultipleChoicePredictor(TaskPredictor):
    """``{"choice": int, "probabilities": list[float]}`` (softmax over the input's choices)."""

    default_fields = {"question_column": "question", "choices_column": "choices", "context_column": "context"}

    @property
    def fields(self) -> list[str]:
        c = self.config
        return [*([c.context_column] if c.context_column else []), c.question_column, c.choices_column]

    @property
    def optional_fields(self) -> list[str]:
        return [self.config.context_column] if self.config.context_column and not self.strict else []

    def parse_mapping(self, item: Mapping[str, Any]) -> dict[str, Any]:
        c = self.config
        parsed = {
            "question": self._get(item, c.question_column, "str"),
            "choices": self._get(item, c.choices_column, "list"),
            "context": self._get(item, c.context_column, "str", optional=not self.strict) if c.context_column else None,
        }
        if not parsed["choices"]:
            raise InputError(f"field {c.choices_column!r} is an empty list; give at least one choice")
        return parsed

    def encode(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        c = self.config
        examples: dict[str, list] = {
            c.question_column: [it["question"] for it in items],
            c.choices_column: [it["choices"] for it in items],
            c.label_column: [0] * len(items),  # the task's preprocessing wants a label; never read here
        }
        if c.context_column:
            examples[c.context_column] = [it["context"] or "" for it in items]
        encoded = self.task.preprocess(examples, self.tokenizer, self.max_length)
        return [{**{key: values[i] for key, values in encoded.items()}, "item": i} for i in range(len(items))]

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.task.collate(features, self.tokenizer)
        del batch["labels"]
        return batch

    def decode(self, items, features, logits, options: PredictOptions) -> list[dict[str, Any]]:
        results = []
        for item, row in zip(items, logits):
            probs = softmax(row[: len(item["choices"])])  # padded choices are -inf anyway: cut them off
            results.append({"choice": int(probs.argmax()), "probabilities": [float(p) for p in probs]})
        return results
