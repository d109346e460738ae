"""Multiple choice (CommonsenseQA, ARC, COPA...): score each (question, choice) pair, softmax over choices.

Each choice is encoded as the pair ``(context + question, choice)``; the head maps each pair to one
score. The number of choices may vary between examples (ARC has 3 to 5): a batch pads to its widest
example and `choice_mask` hides the padded choices from the softmax.

Example config::

    copa:
      type: multiple_choice
      data_files: {train: ../shared/data/copa/train.jsonl, validation: ../shared/data/copa/validation.jsonl}
      context_column: premise
      question_column: question
      choices_column: choices
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DataError
from . import register_task
from .base import PooledHead, Task, TaskConfig


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

    def required_columns(self) -> list[str]:
        c = self.config
        columns = [c.question_column, c.choices_column, c.label_column]
        return [c.context_column, *columns] if c.context_column else columns

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
