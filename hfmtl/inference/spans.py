"""Predictions of extractive question answering: ``{"answer", "score", "start", "end"}``.

Inputs: a mapping with the task's ``question_column`` and ``context_column``, or a
``(question, context)`` tuple. The windows over long contexts (``doc_stride``) are the task's own
(`QuestionAnsweringTask.preprocess_eval`), and so is the choice of span (`best_span`: the
``n_best_size`` best starts and ends, at most ``max_answer_length`` tokens): the answer is the span with
the highest start + end logit over all windows, as evaluation picks it. ``start``/``end`` are character
offsets into the context (``context[start:end] == answer``); ``score`` is the span's probability within
its window (softmax of the start and of the end logits over the window's context tokens, multiplied).
A context with no valid span gives ``{"answer": "", "score": 0.0, "start": 0, "end": 0}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import DataError
from ..tasks.prediction import PredictOptions, TaskPredictor, features_by_item, register_predictor, softmax
from ..tasks.question_answering import best_span


@register_predictor("question_answering")
class QuestionAnsweringPredictor(TaskPredictor):
    """The best answer span of each (question, context) input."""

    default_fields = {"question_column": "question", "context_column": "context"}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.tokenizer is not None and not getattr(self.tokenizer, "is_fast", False):
            raise DataError(f"task {self.name!r}: question answering needs a fast tokenizer (for offsets)")

    @property
    def fields(self) -> list[str]:
        return [self.config.question_column, self.config.context_column]

    def parse_mapping(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "question": self._get(item, self.config.question_column, "str"),
            "context": self._get(item, self.config.context_column, "str"),
        }

    def parse_shorthand(self, item: Any) -> dict[str, Any]:
        if isinstance(item, tuple) and len(item) == 2:
            return self.parse_mapping(dict(zip(self.fields, item)))
        return super().parse_shorthand(item)

    def encode(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        c = self.config
        examples = {
            c.id_column: [str(it["index"]) for it in items],  # names a too-long question in the task's error
            c.question_column: [it["question"] for it in items],
            c.context_column: [it["context"] for it in items],
        }
        encoded = self.task.preprocess_eval(examples, self.tokenizer, self.max_length)
        position = {example_id: k for k, example_id in enumerate(examples[c.id_column])}
        return [
            {**{key: values[i] for key, values in encoded.items()}, "item": position[encoded["example_id"][i]]}
            for i in range(len(encoded["input_ids"]))
        ]

    def decode(self, items, features, logits, options: PredictOptions) -> list[dict[str, Any]]:
        c = self.config
        results = []
        for item, windows in zip(items, features_by_item(features, logits, len(items))):
            best = None  # (score, window offsets, start token, end token, window logits)
            for feature, row in windows:
                offsets = feature["offset_mapping"]
                span = best_span(row[:, 0], row[:, 1], offsets, c.n_best_size, c.max_answer_length)
                if span is not None and (best is None or span[0] > best[0]):
                    best = (span[0], offsets, span[1], span[2], row)
            if best is None:
                results.append({"answer": "", "score": 0.0, "start": 0, "end": 0})
                continue
            _, offsets, s, e, row = best
            context_tokens = np.array([o is not None for o in offsets])
            p_start = softmax(np.where(context_tokens, row[:, 0], -np.inf))
            p_end = softmax(np.where(context_tokens, row[:, 1], -np.inf))
            start, end = offsets[s][0], offsets[e][1]
            results.append(
                {
                    "answer": item["context"][start:end],
                    "score": float(p_start[s] * p_end[e]),
                    "start": int(start),
                    "end": int(end),
                }
            )
        return results
