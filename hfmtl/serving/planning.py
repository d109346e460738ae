"""One ``POST /predict`` body, checked and turned into `Predictor.predict_many` entries, and back.

Everything a request could get wrong is found here, before the request joins a batch: which tasks it
names, the shape of ``inputs``, and each input against each task (`Predictor.check`: fields present,
of the right types). A request that passes cannot fail the other requests of its batch.

A request for several tasks (``tasks``: a list, or ``"all"``) becomes one entry per task and input,
``{"task": name, **input}``: `predict_many` then sees every task's entries of one input together (and
can run the encoder once for them); `Plan.assemble` regroups the results as ``{task: result}``.

Example:
    >>> class FakePredictor:
    ...     tasks = {"rte": "classification", "stsb": "regression"}
    ...     def fields(self, task_name):
    ...         return ["sentence1", "sentence2"]
    ...     def check(self, task_name, item):
    ...         if "sentence2" not in item:
    ...             raise HfmtlError("missing field 'sentence2'")
    >>> pair = {"sentence1": "It rains.", "sentence2": "It is wet."}
    >>> plan = plan_request(FakePredictor(), {"tasks": "all", "inputs": pair})
    >>> [entry["task"] for entry in plan.entries]
    ['rte', 'stsb']
    >>> plan.assemble(["entailment", 4.2])
    {'rte': 'entailment', 'stsb': 4.2}
    >>> plan_request(FakePredictor(), {"task": "rte", "inputs": [pair, {"sentence1": "Hi."}]})
    Traceback (most recent call last):
    ...
    hfmtl.serving.planning.RequestError: task 'rte', input 1: missing field 'sentence2'
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import HfmtlError
from ..inference.predictor import Predictor
from ..tasks.prediction import InputError

ALL_TASKS = "all"


class RequestError(HfmtlError):
    """A request the server cannot answer, with the HTTP status to answer it with (a 4xx)."""

    def __init__(self, message: str, status_code: int = 422):
        super().__init__(message)
        self.status_code = status_code


@dataclass
class Plan:
    """A checked request: its `predict_many` entries, its options, and how to regroup the results.

    Attributes:
        entries: ``{"task": name, **input}`` for each input and task, input by input.
        options: `Predictor.predict`'s keyword options for this request.
        task_names: the tasks asked for; `multi_task`: the request named them with ``tasks``.
        single: ``inputs`` was one input, not a list.
    """

    entries: list[dict[str, Any]]
    task_names: list[str]
    multi_task: bool
    single: bool
    options: dict[str, Hashable] = field(default_factory=dict)

    def assemble(self, results: list[Any]) -> Any:
        """The response's predictions from the entries' results (in `entries` order)."""
        if len(results) != len(self.entries):
            raise RuntimeError(f"{len(results)} results for {len(self.entries)} entries")
        n = len(self.task_names)
        per_input = [results[i : i + n] for i in range(0, len(results), n)]
        if self.multi_task:
            per_input = [dict(zip(self.task_names, outputs)) for outputs in per_input]
        else:
            per_input = [outputs[0] for outputs in per_input]
        return per_input[0] if self.single else per_input


def plan_request(predictor: Predictor, body: Mapping[str, Any], options: Mapping[str, Hashable] | None = None) -> Plan:
    """Check a ``/predict`` body (``task`` or ``tasks``, and ``inputs``) against the model's tasks.

    Args:
        predictor: the served predictor (`tasks`, `fields` and `check` are used, never the model).
        body: the request body, already parsed from JSON.
        options: `Predictor.predict`'s keyword options (``return_all_scores``, ``top_k``, ``threshold``).

    Raises:
        RequestError: a one-line message naming the problem: both or neither of ``task`` and ``tasks``,
            an unknown task, ``inputs`` that are not objects, or an input without a field a task reads.
    """
    task_names, multi_task = _task_names(predictor, body.get("task"), body.get("tasks"))
    inputs = body.get("inputs")
    if isinstance(inputs, Mapping):
        items, single = [inputs], True
    elif isinstance(inputs, list):
        items, single = inputs, False
    else:
        got = "nothing" if inputs is None else f"a {_json_type(inputs)}"
        raise RequestError(
            f"'inputs' must be one input (a JSON object with the task's fields) or a list of them; got {got}"
        )
    for i, item in enumerate(items):
        where = "" if single else f"input {i}: "
        if not isinstance(item, Mapping):
            raise RequestError(
                f"{where}expected a JSON object with the fields of "
                + "; ".join(f"task {name!r} ({predictor.describe_fields(name)})" for name in task_names)
                + f", got a {_json_type(item)}"
            )
        for name in task_names:
            try:
                predictor.check(name, item)
            except (InputError, HfmtlError) as err:
                place = f"task {name!r}" + (f", input {i}" if not single else "")
                raise RequestError(f"{place}: {err}") from None
    entries = [{**item, "task": name} for item in items for name in task_names]
    return Plan(entries, task_names, multi_task, single, dict(options or {}))


def _task_names(predictor: Predictor, task: Any, tasks: Any) -> tuple[list[str], bool]:
    """The requested task names, each known to the model, and whether ``tasks`` named them."""
    if (task is None) == (tasks is None):
        which = "both" if task is not None else "neither"
        raise RequestError(
            f"give either 'task' (one task name) or 'tasks' (a list of names, or \"all\"); the request has {which}"
        )
    if task is not None:
        if not isinstance(task, str):
            raise RequestError(f"'task' must be a task name (a string), got a {_json_type(task)}")
        names, multi_task = [task], False
    elif tasks == ALL_TASKS:
        names, multi_task = list(predictor.tasks), True
    elif isinstance(tasks, list) and tasks and all(isinstance(name, str) for name in tasks):
        names, multi_task = list(tasks), True
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise RequestError(f"'tasks' names {twice[0]!r} twice; name each task once")
    else:
        raise RequestError(f"'tasks' must be a non-empty list of task names or \"all\", got {_short(tasks)}")
    for name in names:
        if name not in predictor.tasks:
            try:
                predictor.fields(name)  # its error says which task was probably meant
            except HfmtlError as err:
                raise RequestError(str(err)) from None
            raise RequestError(f"unknown task {name!r}")
    return names, multi_task


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
