"""Predictions of token classification (NER, POS, chunking): entities with character offsets.

Inputs: a raw string (a mapping with ``text``, or the string itself), split here into words with
their character offsets, or pre-split words (a mapping with the task's ``tokens_column``, or a list of
strings inside the list of inputs); pre-split words are joined by single spaces to form the text the
offsets point into, as transformers' pipeline does.

As in training, each word is tagged from its first sub-token. Texts longer than ``max_length`` are
split into overlapping windows, and each word takes the tags of the window where it has the most
context on both sides. Words are then grouped like the pipeline's ``aggregation_strategy="simple"``:
for IOB/IOBES tags, ``B-X I-X ...`` becomes one entity ``X`` ("O" words are no entity); other tag sets
(POS) give one entry per word. Each entity is ``{"entity_group", "score", "word", "start", "end"}``:
``text[start:end] == word`` in the original text, and ``score`` is the mean of its words' probabilities.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import DataError
from ..tasks.prediction import InputError, PredictOptions, TaskPredictor, features_by_item, register_predictor, softmax

RAW_TEXT_FIELD = "text"
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


@register_predictor("token_classification")
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
        for field in dict.fromkeys((self.config.tokens_column, RAW_TEXT_FIELD)):
            if field in item and item[field] is not None:
                value = item[field]
                return self._words(value, field) if isinstance(value, str) else self._words(value, field, split=True)
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
            for word, row in self._first_subtokens(windows).items():
                probs = softmax(row)
                best = int(probs.argmax())
                tags[word] = (id2label[best], float(probs[best]))
            results.append(self._group(item, tags))
        return results

    @staticmethod
    def _first_subtokens(windows: list[tuple[dict[str, Any], np.ndarray]]) -> dict[int, np.ndarray]:
        """word -> logits of its first sub-token, from the window where that token has most context."""
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
