"""Extractive question answering in SQuAD layout: the answer is a span of the context.

Long contexts are split into overlapping windows (`doc_stride` tokens of overlap); each window is one
feature. In training, a window that does not contain the whole answer points at the first token ([CLS])
as "no answer here". In evaluation the best-scoring valid span over all windows of a question (among
the `n_best_size` top starts and ends, at most `max_answer_length` tokens) is mapped back to context
characters through the offset mapping, and scored with SQuAD exact match / F1.

Predictions (`hfmtl.Predictor`): an input is a mapping with the task's ``question_column`` and
``context_column``, or a ``(question, context)`` tuple. The windows and the choice of span are
evaluation's own (`preprocess_eval`, `best_span`): the answer is the span with the highest start + end
logit over all windows. Result: ``{"answer", "score", "start", "end"}``, where ``start``/``end`` are
character offsets into the context (``context[start:end] == answer``) and ``score`` is the span's
probability within its window (softmax of the start and of the end logits over the window's context
tokens, multiplied). A context with no valid span gives ``{"answer": "", "score": 0.0, "start": 0, "end": 0}``.

Example config::

    squad:
      type: question_answering
      data_files: {train: ../shared/data/squad/train.jsonl, validation: ../shared/data/squad/validation.jsonl}
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForQuestionAnswering

from ..errors import DataError
from .base import Task, TaskConfig
from .capabilities import FeatureUnit, StandardHead, Unsupported, UsageSnippet
from .heads import TokenHead
from .prediction import PredictOptions, TaskPredictor, features_by_item, softmax
from .registry import register_task


@dataclass
class QuestionAnsweringConfig(TaskConfig):
    question_column: str = field(default="question", metadata={"help": "Column with the question."})
    context_column: str = field(default="context", metadata={"help": "Column with the passage holding the answer."})
    answers_column: str = field(
        default="answers", metadata={"help": "Column of {text: [...], answer_start: [...]} (SQuAD layout)."}
    )
    id_column: str = field(default="id", metadata={"help": "Column with a unique id per example (scored by id)."})
    max_length: int | None = field(
        default=384, metadata={"help": "Tokens per window of question + context; long contexts get several windows."}
    )
    doc_stride: int = field(default=128, metadata={"help": "Tokens shared by two consecutive windows."})
    n_best_size: int = field(default=20, metadata={"help": "Top start and end logits searched for the answer span."})
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer span, in tokens."})
    metrics: list[str] | None = field(
        default_factory=lambda: ["squad"], metadata={"help": "Metric names; squad gives exact_match and f1."}
    )


def best_span(
    start_logits: np.ndarray, end_logits: np.ndarray, offsets: list, n_best_size: int, max_answer_length: int
) -> tuple[float, int, int] | None:
    """The best answer span of one window: (start + end logit, start token, end token), or None.

    Candidates are the `n_best_size` highest start and end logits; a span is valid when both ends are
    context tokens (their `offsets` are not None), it does not end before it starts, and it has at most
    `max_answer_length` tokens. Shared by evaluation (`decode`) and prediction (`QuestionAnsweringPredictor`).
    """
    best = None
    for s in np.argsort(start_logits)[::-1][:n_best_size]:
        if offsets[s] is None:
            continue
        for e in np.argsort(end_logits)[::-1][:n_best_size]:
            if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, int(s), int(e))
    return best


@register_task("question_answering")
class QuestionAnsweringTask(Task):
    """SQuAD-style extractive QA with windows over long contexts and n-best span decoding."""

    config_class = QuestionAnsweringConfig
    config: QuestionAnsweringConfig
    default_metrics = ("squad",)
    pipeline_tag = "question-answering"
    # labels and offsets are token positions counted from the left of each window: padding on the right
    # keeps them valid whichever side the tokenizer pads on
    padding_side = "right"

    def required_columns(self) -> list[str]:
        c = self.config
        return [c.id_column, c.question_column, c.context_column, c.answers_column]

    def text_columns(self) -> dict[str, bool]:
        return {self.config.question_column: False, self.config.context_column: False}

    def default_main_metric(self) -> str:
        return "f1"

    def head_spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "num_labels": 2}

    def _tokenize(self, examples: dict[str, list], tokenizer, max_length: int):
        if self.config.doc_stride >= max_length:
            raise DataError(
                f"task {self.name!r}: doc_stride={self.config.doc_stride} must be smaller than max_length={max_length}"
            )
        questions = [q.lstrip() for q in examples[self.config.question_column]]
        # Each window must have room for the question, the special tokens and more context than the
        # stride; otherwise the fast tokenizer panics (a BaseException that no `except` would catch).
        room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - self.config.doc_stride
        for i, ids in enumerate(tokenizer(questions, add_special_tokens=False)["input_ids"]):
            if len(ids) >= room:
                raise DataError(
                    f"task {self.name!r}: question {examples[self.config.id_column][i]!r} has {len(ids)} tokens, "
                    f"too long for windows of max_length={max_length} with doc_stride={self.config.doc_stride}; "
                    "raise max_length or lower doc_stride"
                )
        return tokenizer(
            questions,
            examples[self.config.context_column],
            truncation="only_second",
            max_length=max_length,
            stride=self.config.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )

    def preprocess(self, examples: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
        features = self._tokenize(examples, tokenizer, max_length)
        sample_map = features.pop("overflow_to_sample_mapping")
        offsets_all = features.pop("offset_mapping")
        labels = []
        for i, offsets in enumerate(offsets_all):
            answers = examples[self.config.answers_column][sample_map[i]]
            if not answers["text"]:
                raise DataError(f"task {self.name!r}: a training question has no answer")
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            sequence_ids = features.sequence_ids(i)
            context_start = sequence_ids.index(1)
            context_end = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
            if offsets[context_start][0] > start_char or offsets[context_end][1] < end_char:
                labels.append([0, 0])  # the answer is not (wholly) in this window
                continue
            start = context_start
            while start <= context_end and offsets[start][0] <= start_char:
                start += 1
            end = context_end
            while end >= context_start and offsets[end][1] >= end_char:
                end -= 1
            labels.append([start - 1, end + 1])
        features["labels"] = labels
        return features

    def preprocess_eval(self, examples: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
        features = self._tokenize(examples, tokenizer, max_length)
        sample_map = features.pop("overflow_to_sample_mapping")
        example_ids, offset_mapping = [], []
        for i, offsets in enumerate(features["offset_mapping"]):
            example_ids.append(examples[self.config.id_column][sample_map[i]])
            sequence_ids = features.sequence_ids(i)
            # keep offsets of context tokens only: a span may start and end only there
            offset_mapping.append([o if sequence_ids[k] == 1 else None for k, o in enumerate(offsets)])
        features["offset_mapping"] = offset_mapping
        features["example_id"] = example_ids
        return features

    def collate(self, features: list[dict[str, Any]], tokenizer) -> dict[str, torch.Tensor]:
        return self.pad_features(features, tokenizer)

    @staticmethod
    def build_head(spec: dict[str, Any], hidden_size: int, dropout: float, pooling: str) -> nn.Module:
        # no dropout, as transformers' ...ForQuestionAnswering: one linear layer giving start/end logits
        return TokenHead(hidden_size, 2, dropout=0.0)

    @staticmethod
    def compute_loss(spec: dict[str, Any], logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        length = logits.shape[1]
        positions = labels.clamp(0, length)  # a position past the window is ignored (index == length)
        start_loss = F.cross_entropy(logits[..., 0].float(), positions[:, 0], ignore_index=length)
        end_loss = F.cross_entropy(logits[..., 1].float(), positions[:, 1], ignore_index=length)
        return (start_loss + end_loss) / 2

    def eval_outputs(self, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"start_logits": logits[..., 0].float(), "end_logits": logits[..., 1].float()}

    def decode(self, outputs: list[dict[str, np.ndarray]], eval_features: Any, eval_examples: Any):
        """Best answer per question: {id: {"text", "answer_start", "score"}} from windowed logits."""
        starts = [row for out in outputs for row in out["start_logits"]]
        ends = [row for out in outputs for row in out["end_logits"]]
        features_by_example = collections.defaultdict(list)
        for index, example_id in enumerate(eval_features["example_id"]):
            features_by_example[example_id].append(index)
        all_offsets = eval_features["offset_mapping"]
        n_best, max_len = self.config.n_best_size, self.config.max_answer_length
        answers = {}
        for example in eval_examples:
            qid, context = example[self.config.id_column], example[self.config.context_column]
            best = {"text": "", "answer_start": -1, "score": -np.inf}
            for index in features_by_example[qid]:
                offsets = all_offsets[index]
                span = best_span(starts[index][: len(offsets)], ends[index][: len(offsets)], offsets, n_best, max_len)
                if span is not None and span[0] > best["score"]:
                    char_start, char_end = offsets[span[1]][0], offsets[span[2]][1]
                    best = {"text": context[char_start:char_end], "answer_start": char_start, "score": span[0]}
            answers[qid] = best
        return answers

    def compute_metrics(self, outputs, eval_features, eval_examples) -> dict[str, float]:
        decoded = self.decode(outputs, eval_features, eval_examples)
        predictions = {qid: answer["text"] for qid, answer in decoded.items()}
        references = {ex[self.config.id_column]: list(ex[self.config.answers_column]["text"]) for ex in eval_examples}
        return self._compute_named_metrics(predictions, references)

    @classmethod
    def predictor_class(cls) -> type[TaskPredictor]:
        return QuestionAnsweringPredictor

    @classmethod
    def describe_predictions(cls, spec: dict[str, Any]) -> str:
        return "an answer span of the context"

    @classmethod
    def standard_head(cls, spec: dict[str, Any]) -> StandardHead:
        return StandardHead(
            AutoModelForQuestionAnswering, "token", token_module="qa_outputs", pipeline="question-answering"
        )

    @classmethod
    def feature_unit(cls) -> FeatureUnit:
        raise Unsupported("question answering's targets are answer spans, not a label per example, token or choice")

    @classmethod
    def check_input_group(cls) -> None:
        raise Unsupported("is question answering (a row becomes one feature per window of its context)")

    @classmethod
    def usage_snippet(cls, task_name: str, spec: dict[str, Any], section: dict[str, Any]) -> UsageSnippet:
        task = repr(task_name)
        return UsageSnippet(
            (
                'inputs = tokenizer("Where does Anna live?", "Anna lives in Paris and works in Lyon.", return_tensors="pt")',
                f"start_end = model(task={task}, **inputs).logits[0]  # (tokens, 2): start and end scores",
                "start, end = start_end[:, 0].argmax().item(), start_end[:, 1].argmax().item()",
                f'print({task}, tokenizer.decode(inputs["input_ids"][0][start : end + 1]))',
            )
        )


# --- predictions ------------------------------------------------------------------------------------


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
