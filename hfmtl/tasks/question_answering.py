"""Extractive question answering in SQuAD layout: the answer is a span of the context.

Long contexts are split into overlapping windows (`doc_stride` tokens of overlap); each window is one
feature. In training, a window that does not contain the whole answer points at the first token ([CLS])
as "no answer here". In evaluation the best-scoring valid span over all windows of a question (among
the `n_best_size` top starts and ends, at most `max_answer_length` tokens) is mapped back to context
characters through the offset mapping, and scored with SQuAD exact match / F1.

Example config::

    squad:
      type: question_answering
      data_files: {train: ../shared/data/squad/train.jsonl, validation: ../shared/data/squad/validation.jsonl}
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DataError
from . import register_task
from .base import Task, TaskConfig, TokenHead


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
    `max_answer_length` tokens. Shared by evaluation (`decode`) and `hfmtl.inference`.
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

    def required_columns(self) -> list[str]:
        c = self.config
        return [c.id_column, c.question_column, c.context_column, c.answers_column]

    def default_main_metric(self) -> str:
        return "f1"

    def head_spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "num_labels": 2}

    def _tokenize(self, examples: dict[str, list], tokenizer, max_length: int):
        if tokenizer.padding_side != "right":
            raise DataError(f"task {self.name!r}: question answering needs a tokenizer that pads on the right")
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
