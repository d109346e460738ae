"""The answers a task type gives generic code, and the error for a question it cannot answer.

`Task`'s classmethods in hfmtl/tasks/base.py return these: `StandardHead` (the export), `FeatureUnit`
(the transferability estimates), `UsageSnippet` (the model card). Generic code asks the task class of a
head spec (`hfmtl.tasks.get_task_class(spec["type"])`) and never switches on a type's name.

Example:
    >>> from transformers import AutoModelForTokenClassification
    >>> StandardHead(AutoModelForTokenClassification, "token", token_module="classifier").layout
    'token'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..errors import HfmtlError


class Unsupported(HfmtlError):
    """A task type cannot do what generic code asked of it (export it, extract its features...).

    The `Task` hooks raise it with the reason only; the caller says which task and what was asked.
    """


@dataclass(frozen=True)
class StandardHead:
    """The standard transformers model a task's head becomes on export (hfmtl/publish/export.py).

    Attributes:
        auto_class: the transformers Auto class of that model, e.g. `AutoModelForTokenClassification`.
        layout: how the head's weights move. 'sequence' / 'choice': a `PooledHead` becomes the encoder
            family's sequence-classification / multiple-choice head (a 'choice' model's inputs have a
            choices dimension); 'token': a `TokenHead`'s linear layer becomes `token_module`.
        token_module: for the 'token' layout, the standard model's attribute that holds that layer.
        problem_type: the exported config's ``problem_type`` where the head spec names none.
        pipeline: the `transformers.pipeline` task that runs the export; None where transformers has none.
    """

    auto_class: Any
    layout: Literal["sequence", "choice", "token"]
    token_module: str | None = None
    problem_type: str | None = None
    pipeline: str | None = None


@dataclass(frozen=True)
class FeatureUnit:
    """What one row of a task's frozen features is, for the transferability estimates
    (hfmtl/analysis/features.py).

    Attributes:
        unit: 'example': one pooled vector per example, labelled by its ``labels``; 'token': one vector
            per token whose label is not ``IGNORE_INDEX``; 'choice': one pooled vector per (example,
            choice), labelled 1 for the right choice and 0 for the others.
        regression: the labels are real values, not class ids.
    """

    unit: Literal["example", "token", "choice"]
    regression: bool = False


@dataclass(frozen=True)
class UsageSnippet:
    """The model card's usage example for one task (hfmtl/publish/model_card.py).

    The card's code has loaded ``model`` (through `transformers.AutoModel`) and ``tokenizer`` before it.

    Attributes:
        lines: code that runs the task on a made-up input and prints a line starting with the task name.
        setup: lines defining inputs that several tasks may share (``pair = tokenizer(...)``): the card
            writes each once, before the first task that needs it.
    """

    lines: tuple[str, ...]
    setup: tuple[str, ...] = ()
