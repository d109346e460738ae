"""Predictions of multiple choice: ``{"choice": index, "probabilities": [one per choice]}``.

Inputs: a mapping with the task's ``question_column``, ``choices_column`` (a list of strings, any
number per input) and ``context_column`` if the task has one. Encoding and padding are the task's own
(`MultipleChoiceTask.preprocess` / `collate`), so each (context + question, choice) pair is encoded
exactly as in training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..tasks.prediction import InputError, PredictOptions, TaskPredictor, register_predictor, softmax


@register_predictor("multiple_choice")
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
