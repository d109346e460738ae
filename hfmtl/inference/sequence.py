"""Predictions of sequence-level tasks: classification (multi-class or multi-label) and regression.

Inputs: a mapping with the task's ``text_column`` (and ``text_pair_column``), a string, or a
``(text, text_pair)`` tuple. Results: ``{"label", "score"}`` (softmax; ``scores`` too on request),
``{"labels": [{"label", "score"}, ...]}`` for multi-label (sigmoid per label, those above the
threshold), ``{"value"}`` for regression.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..tasks.prediction import InputError, PredictOptions, TaskPredictor, register_predictor, softmax


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


@register_predictor("classification")
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


@register_predictor("regression")
class RegressionPredictor(_SequencePredictor):
    """``{"value": float}``."""

    def decode(self, items, features, logits, options: PredictOptions) -> list[dict[str, Any]]:
        return [{"value": float(row[0])} for row in logits]
