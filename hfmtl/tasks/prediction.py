"""The contract of a task type's predictor, and helpers any predictor may use (softmax, grouping a
call's features by input, words of a raw text, the first sub-token of each word over windows).

A `TaskPredictor` turns one task's raw inputs into model features and the model's logits back into
results. It reuses its task type's own config (column names, `max_length`, QA's `doc_stride`...) and,
where they fit, the task's own preprocessing and collation, so that prediction encodes text exactly as
training and evaluation did. A task type gets predictions by defining a subclass in its own file and
returning it from its `Task.predictor_class`; `hfmtl.Predictor` asks the task class for it.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from .base import Task


class InputError(ValueError):
    """One input does not fit its task (a missing field, a wrong type); the caller adds where it was."""


@dataclass(frozen=True)
class PredictOptions:
    """Options of one `Predictor.predict` call; each task type reads those that apply to it.

    Attributes:
        return_all_scores: classification: add ``scores``, every label with its probability.
        top_k: classification: add ``scores`` with the `top_k` most probable labels only.
        threshold: multi-label classification: a label is predicted when its probability exceeds it.
    """

    return_all_scores: bool = False
    top_k: int | None = None
    threshold: float = 0.5


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 (stable: the max is subtracted first)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class TaskPredictor(abc.ABC):
    """Prediction for one task of a model.

    Args:
        task: the task object (its `config` gives the input field names and options).
        spec: the task's head spec from the model config (type, num_labels, id2label...).
        tokenizer: the model's tokenizer (None: the predictor only describes the task's inputs).
        max_length: tokens per encoded input.
        strict: the field names come from the run's saved config: fields the task was trained with
            are required. Otherwise (documented default names) the second text of a pair, or a
            multiple-choice context, may be left out.
    """

    #: config field overrides used when the model has no saved run config (``config.yaml``)
    default_fields: ClassVar[dict[str, Any]] = {}

    def __init__(self, task: Task, spec: dict[str, Any], tokenizer, max_length: int, strict: bool):
        self.task = task
        self.config = task.config
        self.spec = spec
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.strict = strict

    @property
    def name(self) -> str:
        return self.task.name

    @property
    @abc.abstractmethod
    def fields(self) -> list[str]:
        """The input field names, required first (see `optional_fields`)."""

    @property
    def optional_fields(self) -> list[str]:
        """The fields of `fields` that may be left out."""
        return []

    def describe_fields(self) -> str:
        optional = set(self.optional_fields)
        return ", ".join(f"{f} (optional)" if f in optional else f for f in self.fields)

    # --- inputs -----------------------------------------------------------------------------------

    def parse(self, item: Any) -> dict[str, Any]:
        """One input (a mapping with the task's fields, or a type's shorthand) as a checked dict.

        Raises:
            InputError: a field is missing or has the wrong type.
        """
        if isinstance(item, Mapping):
            return self.parse_mapping(item)
        return self.parse_shorthand(item)

    @abc.abstractmethod
    def parse_mapping(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Check a mapping input; keep only the fields this task reads."""

    def parse_shorthand(self, item: Any) -> dict[str, Any]:
        raise InputError(
            f"expected a mapping with the fields {self.describe_fields()}, got {type(item).__name__} {_short(item)}"
        )

    def _get(self, item: Mapping[str, Any], field: str, kind: str, optional: bool = False) -> Any:
        """item[field], checked to be a string ('str') or a list of strings ('list')."""
        if field not in item or item[field] is None:
            if optional:
                return None
            raise InputError(f"missing field {field!r} (task {self.name!r} reads {self.describe_fields()})")
        value = item[field]
        if kind == "str" and not isinstance(value, str):
            raise InputError(f"field {field!r} must be a string, got {type(value).__name__} {_short(value)}")
        if kind == "list" and not (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
            raise InputError(f"field {field!r} must be a list of strings, got {_short(value)}")
        return list(value) if kind == "list" else value

    # --- model side -----------------------------------------------------------------------------

    @abc.abstractmethod
    def encode(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Features of parsed inputs (each with ``index``, its position among the call's inputs): encoder
        inputs plus ``item`` (the position of its input in `items`);
        an input may give several features (QA windows) or none."""

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """A padded batch of encoder inputs (other feature keys are dropped)."""
        return self.task.pad_features(features, self.tokenizer, with_labels=False)

    @staticmethod
    def unbatch(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
        """Each feature's logits without padding: (num_labels,), (choices,) or (tokens, num_labels)."""
        logits = logits.float().cpu()
        if logits.dim() == 3:  # token-level: keep the real tokens, whichever side was padded
            mask = batch["attention_mask"].bool().cpu()
            return [row[m].numpy() for row, m in zip(logits, mask)]
        return [row.numpy() for row in logits]

    @abc.abstractmethod
    def decode(
        self,
        items: list[dict[str, Any]],
        features: list[dict[str, Any]],
        logits: list[np.ndarray],
        options: PredictOptions,
    ) -> list[Any]:
        """One result per input of `items`, from its features' logits (``logits[i]`` is feature i's)."""


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def features_by_item(features: list[dict[str, Any]], logits: list[np.ndarray], n: int) -> list[list[tuple]]:
    """[(feature, logits), ...] of each input, in feature order."""
    grouped: list[list[tuple]] = [[] for _ in range(n)]
    for feature, row in zip(features, logits):
        grouped[feature["item"]].append((feature, row))
    return grouped


# A word is a run of letters/digits, joined across inner apostrophes, hyphens and dots (don't, e-mail,
# 3.5); any other non-space character is a word of its own: CoNLL's tokenization, roughly.
_WORD = re.compile(r"\w+(?:['’.\-]\w+)*|\S")


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words of `text` and their (start, end) character offsets.

    Example:
        >>> split_words("Mr.  Smith's e-mail!")
        (['Mr', '.', "Smith's", 'e-mail', '!'], [(0, 2), (2, 3), (5, 12), (13, 19), (19, 20)])
    """
    matches = list(_WORD.finditer(text))
    return [m.group() for m in matches], [m.span() for m in matches]


def first_subtoken_logits(windows: list[tuple[dict[str, Any], np.ndarray]]) -> dict[int, np.ndarray]:
    """word -> logits of its first sub-token, from the window where that token has most context.

    For word-level tasks whose inputs were encoded with ``is_split_into_words`` and overflowing windows:
    `windows` are one input's (feature, logits) pairs, each feature with ``word_ids`` and ``offsets``.
    """
    # With is_split_into_words, offsets count characters within each word: a word's first sub-token
    # is the one that starts earliest. A window may open on a word's later sub-tokens.
    first_char: dict[int, int] = {}
    for feature, _ in windows:
        for word, (start, _end) in zip(feature["word_ids"], feature["offsets"]):
            if word is not None:
                first_char[word] = min(start, first_char.get(word, start))
    chosen: dict[int, tuple[int, np.ndarray]] = {}
    for feature, row in windows:
        positions = [p for p, w in enumerate(feature["word_ids"]) if w is not None]
        if not positions:
            continue
        lo, hi, seen = positions[0], positions[-1], set()
        for p in positions:
            word = feature["word_ids"][p]
            if word in seen or feature["offsets"][p][0] != first_char[word]:
                continue
            seen.add(word)
            context = min(p - lo, hi - p)
            if word not in chosen or context > chosen[word][0]:
                chosen[word] = (context, row[p])
    return {word: row for word, (_, row) in chosen.items()}
