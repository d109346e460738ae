"""Predictions of many (task, input) pairs with as few encoder passes as the model allows: what runs
behind `Predictor.predict` (one task or several) and `Predictor.predict_many`.

Each task's predictor encodes its inputs exactly as it does alone (hfmtl/tasks/prediction.py); what is
shared is the encoder's work on what they encode, in each chunk of ``batch_size`` inputs:

- An encoder row (one encoded text, or one window of a long one) that is identical token for token for
  several tasks is encoded once, and each of those tasks' heads reads its hidden state. Tasks that read
  the same fields with the same tokenization therefore share every row: two classification or
  regression tasks on the same text columns and ``max_length``, two token-classification tasks on the
  same words, two QA tasks with the same columns, ``max_length`` and ``doc_stride``; so do requests
  for different tasks that carry the same input. Tasks that encode differently (other fields, another
  ``max_length``, QA's windows against a whole-text task) get rows of their own.
- The distinct rows of all tasks ride in the same passes: one encoder pass per ``batch_size`` distinct
  rows (sorted by length), every head applied to its own rows of that pass.
- With one PEFT adapter per task the encoder differs per task, so rows are shared within a task only,
  and each batch goes through `MultiTaskModel.forward_mixed`: one pass, each row through its task's
  adapter. Only plain LoRA adapters route rows one by one (`hfmtl.model.adapters.routes_rows`);
  with other tuners (IA3, AdaLoRA, DoRA...) each task gets batches of its own rows, one task per pass.
- A task whose type refuses mixed batches (`Task.check_mixed_batch`: multiple choice, whose input has a
  choices dimension) or whose predictor pads its own way (an overridden `TaskPredictor.collate`) runs
  its own passes, ``batch_size`` features each, as it would alone.
- Rows padded on different sides (`Task.padding_side`; QA pads on the right) never share a batch.

So a chunk costs ``ceil(distinct shared rows / batch_size)`` passes per padding side (per side and
task, for adapters that cannot route rows), plus ``ceil(features / batch_size)`` for each task that
runs its own passes.

Example:
    >>> predictor.predict(["rte", "stsb"], [("It rains.", "It is wet.")])  # one row, both heads  # doctest: +SKIP
    [{'rte': {'label': ..., 'score': ...}, 'stsb': {'value': ...}}]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import HfmtlError
from ..model import MultiTaskModel, adapters
from ..tasks import Unsupported, get_task_class
from ..tasks.prediction import PredictOptions, TaskPredictor

#: the task name that asks for every task (unless a task has that name)
ALL_TASKS = "all"


def requested_tasks(task_name: Any, known: list[str]) -> list[str] | None:
    """None when `task_name` is one task's name; else the names it asks for: a list's (without
    repeats), or every task of `known` for ``"all"`` (unless a task is named "all").

    Raises:
        HfmtlError: neither a name nor a list of names, or an empty list.

    Example:
        >>> requested_tasks("all", ["rte", "ner"]), requested_tasks("rte", ["rte", "ner"])
        (['rte', 'ner'], None)
        >>> requested_tasks(["ner", "rte", "ner"], ["rte", "ner"])
        ['ner', 'rte']
        >>> print(requested_tasks("all", ["all", "rte"]))  # a task named "all" keeps its name
        None
    """
    if isinstance(task_name, str):
        return list(known) if task_name == ALL_TASKS and ALL_TASKS not in known else None
    if not isinstance(task_name, (list, tuple)) or not all(isinstance(t, str) for t in task_name):
        text = repr(task_name)
        text = text if len(text) <= 40 else text[:37] + "..."
        raise HfmtlError(f"tasks={text}: expected a task name, a list of task names, or {ALL_TASKS!r}")
    if not task_name:
        raise HfmtlError(f"an empty list of tasks: name at least one task, or {ALL_TASKS!r}")
    return list(dict.fromkeys(task_name))


@dataclass
class Job:
    """One task to predict for one input.

    Attributes:
        runner: the task's predictor.
        parsed: the input as ``runner.parse`` returned it, with ``index`` (its number in the call, which
            names it in errors; unique among one task's jobs).
        unit: the input (or request) it belongs to: jobs of one unit are encoded in the same chunk.
        size: the input's length in characters (inputs of similar size share chunks: less padding).
        signature: identifies the input's content, so that equal inputs sort next to each other.
    """

    runner: TaskPredictor
    parsed: dict[str, Any]
    unit: int
    size: int = 0
    signature: str = ""


@dataclass
class _Row:
    """A distinct encoder row of a chunk, and the (task, feature) pairs that read it."""

    inputs: dict[str, list[int]]
    side: str
    adapter: str | None
    readers: list[tuple[str, int]] = field(default_factory=list)


class SharedPass:
    """Runs jobs of several tasks with shared encoder passes (see the module docstring).

    Args:
        model: the multi-task model, in eval mode, on `device`.
        tokenizer: its tokenizer.
        device: where the batches go.
        batch_size: inputs per chunk, and rows (or features, for a task on its own passes) per pass.
    """

    def __init__(self, model: MultiTaskModel, tokenizer, device: torch.device, batch_size: int):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self._per_task_adapters = (model.config.peft or {}).get("mode") == "per_task"

    def run(self, jobs: Sequence[Job], options: PredictOptions) -> list[Any]:
        """Each job's result, in the order of `jobs`."""
        units: dict[int, list[int]] = {}
        for j, job in enumerate(jobs):
            units.setdefault(job.unit, []).append(j)
        order = sorted(units, key=lambda u: (max(jobs[j].size for j in units[u]), jobs[units[u][0]].signature))
        results: list[Any] = [None] * len(jobs)
        for start in range(0, len(order), self.batch_size):
            chunk = [j for u in order[start : start + self.batch_size] for j in units[u]]
            for j, result in zip(chunk, self._run_chunk([jobs[j] for j in chunk], options)):
                results[j] = result
        return results

    def _run_chunk(self, jobs: list[Job], options: PredictOptions) -> list[Any]:
        by_task: dict[str, list[int]] = {}
        for j, job in enumerate(jobs):
            by_task.setdefault(job.runner.name, []).append(j)
        runners = {task: jobs[index[0]].runner for task, index in by_task.items()}
        features = {task: runners[task].encode([jobs[j].parsed for j in index]) for task, index in by_task.items()}
        logits: dict[str, list[Any]] = {task: [None] * len(f) for task, f in features.items()}
        rows: dict[tuple, _Row] = {}
        for task, runner in runners.items():
            if not self._shares_passes(runner):
                self._run_alone(runner, features[task], logits[task])
                continue
            side = runner.task.padding_side or self.tokenizer.padding_side
            adapter = task if self._per_task_adapters else None
            for f, feature in enumerate(features[task]):
                inputs = {k: feature[k] for k in runner.task.model_input_names if k in feature}
                key = (adapter, side, *((k, tuple(v)) for k, v in sorted(inputs.items())))
                rows.setdefault(key, _Row(inputs, side, adapter)).readers.append((task, f))
        self._run_shared(list(rows.values()), runners, logits)
        results: list[Any] = [None] * len(jobs)
        for task, index in by_task.items():
            decoded = runners[task].decode([jobs[j].parsed for j in index], features[task], logits[task], options)
            for j, result in zip(index, decoded):
                results[j] = result
        return results

    def _shares_passes(self, runner: TaskPredictor) -> bool:
        if type(runner).collate is not TaskPredictor.collate:
            return False
        try:
            get_task_class(runner.spec["type"]).check_mixed_batch(runner.spec)
        except Unsupported:
            return False
        return True

    def _run_alone(self, runner: TaskPredictor, features: list[dict[str, Any]], logits: list[Any]) -> None:
        """The task's own passes: its collate, its forward, ``batch_size`` features each."""
        order = sorted(range(len(features)), key=lambda i: _num_tokens(features[i]))
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            batch = self._to_device(runner.collate([features[i] for i in index]))
            out = self.model(task=runner.name, **batch).logits
            for i, row in zip(index, runner.unbatch(out, batch)):
                logits[i] = row

    def _run_shared(self, rows: list[_Row], runners: dict[str, TaskPredictor], logits: dict[str, list]) -> None:
        # rows whose adapters cannot share a batch (per-task adapters of a tuner that cannot route rows)
        # get batches of their own, as they would alone; rows on different padding sides too
        routed = not self._per_task_adapters or adapters.routes_rows(self.model)
        groups: dict[tuple, list[_Row]] = {}
        for row in rows:
            groups.setdefault((row.side, None if routed else row.adapter), []).append(row)
        for group in groups.values():
            group.sort(key=lambda r: len(r.inputs["input_ids"]))
            for start in range(0, len(group), self.batch_size):
                batch_rows = group[start : start + self.batch_size]
                for task, row_logits in self._pass(batch_rows, runners).items():
                    for row, value in zip((r for r in batch_rows if _reads(r, task)), row_logits):
                        for reader, f in row.readers:
                            if reader == task:
                                logits[task][f] = value

    def _pass(self, rows: list[_Row], runners: dict[str, TaskPredictor]) -> dict[str, list[np.ndarray]]:
        """One encoder pass over `rows`: task -> the logits of each of its rows (in `rows` order)."""
        padded = self.tokenizer.pad([r.inputs for r in rows], padding_side=rows[0].side, return_tensors="pt")
        batch = self._to_device(dict(padded))
        mask = batch.get("attention_mask")
        tasks = list(dict.fromkeys(task for r in rows for task, _ in r.readers))
        index = {task: [i for i, r in enumerate(rows) if _reads(r, task)] for task in tasks}
        if self._per_task_adapters and len(tasks) > 1:  # one task per row: its adapter routes it
            mixed = self.model.forward_mixed([r.adapter for r in rows], **batch)
            outputs = {task: torch.stack([mixed[i] for i in index[task]]) for task in tasks}
        else:
            # forward runs the encoder once, with the head of the task that has most rows here, and
            # returns the hidden state the other heads read (as forward_mixed does with its rows)
            carrier = max(tasks, key=lambda t: len(index[t]))
            out = self.model(task=carrier, **batch)
            head_mask = mask if "attention_mask" in self.model.encoder_input_names else None
            outputs = {}
            for task in tasks:
                rows_index = torch.tensor(index[task], device=out.hidden_states.device)
                if task == carrier:
                    outputs[task] = out.logits.index_select(0, rows_index)
                    continue
                task_mask = head_mask.index_select(0, rows_index) if head_mask is not None else None
                outputs[task] = self.model.heads[task](out.hidden_states.index_select(0, rows_index), task_mask)
        return {
            task: runners[task].unbatch(value, {"attention_mask": mask[index[task]] if mask is not None else None})
            for task, value in outputs.items()
        }

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}


def _reads(row: _Row, task: str) -> bool:
    return any(reader == task for reader, _ in row.readers)


def _num_tokens(feature: dict[str, Any]) -> int:
    ids = feature["input_ids"]
    return max(map(len, ids)) if ids and isinstance(ids[0], list) else len(ids)
