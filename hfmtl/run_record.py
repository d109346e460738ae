"""The run record: ``metrics.json`` of a training, written and read through one class.

A training writes its record when it starts (its run id), after every evaluation, and twice at the end:
once the final model is saved (`train` is set, and `finishing`: the side jobs -- the model card, a Hub
push -- are still to run), and once they ran (`finishing` is dropped: the run is `finished`, and final:
a re-run of its command trains nothing). Everything that reads a run back (a resume, a staged run's next
stage, cross-validation, the model card, ``hfmtl info``, the Hub upload) reads it through `RunRecord`.

`finishing` is not in metrics.json but beside it, in the hidden file ``.hfmtl-finishing``: the Hub push
among the side jobs uploads metrics.json, which must already be the final one, and leaves hidden files
out. The file is created before metrics.json gains `train` and removed after: its removal is the run's
completion marker, the last thing a training writes.

The file::

    {"history": [{"step": 40, "epoch": 0.5, "eval/rte/accuracy": 0.61, ..., "eval/mean": 0.58}, ...],
     "best": {"step": 40, "metric": "eval/mean", "value": 0.58},
     "main_metrics": {"rte": "accuracy", ...},
     "greater_is_better": {"eval/rte/accuracy": true, ..., "eval/mean": true},
     "run_id": "5f0c...",                                                 # one per training
     "train": {"steps": 80, "runtime_seconds": ..., "mixed_precision": "no", ...,  # once the model is saved
               "nonfinite_skipped_steps": 0}}                  # steps train.nonfinite=skip skipped

A staged run's root directory holds a summary of its stages instead (`write_stages_summary`).

Example:
    >>> record = RunRecord(history=[{"step": 5, "eval/mean": 0.7}, {"step": 10, "eval/mean": 0.6}],
    ...                    best_step=5, best_value=0.7)
    >>> record.saved_evaluation(load_best_model_at_end=True)
    {'step': 5, 'eval/mean': 0.7}
    >>> record.finished
    False
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import HfmtlError
from .files import write_bytes_atomic, write_json_atomic

FILE_NAME = "metrics.json"
FINISHING_FILE = ".hfmtl-finishing"


@dataclass
class RunRecord:
    """The evaluations of one training and, once it finished, what it used and took.

    Attributes:
        history: one entry per evaluation: ``step``, ``epoch`` (absent when a streaming task's size is
            unknown: hfmtl/training/streaming.py) and ``eval/<task>/<metric>`` values.
        best_step: the step of the best evaluation so far (None: nothing evaluated).
        best_metric: the key that chose it (``eval/mean`` unless ``train.metric_for_best_model``).
        best_value: its value at `best_step`.
        main_metrics: task name -> the metric that stands for it in ``eval/mean``.
        greater_is_better: logged key -> whether higher is better (keys of unknown direction are absent).
        train: set when the final model was saved: steps, runtimes, peak memory, the precision,
            compilation and process count the run used, and the optimizer steps skipped for a
            non-finite loss (``nonfinite_skipped_steps``, with ``train.nonfinite: skip``).
        run_id: the training's id (a uuid): its checkpoints carry it, so that a resume and checkpoint
            rotation never take another run's checkpoint for one of this run's.
        finishing: the final model and this record are saved, the side jobs of the end (card, push) not
            yet: a resume only runs those (kept in ``.hfmtl-finishing``, see above).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_step: int | None = None
    best_metric: str = "eval/mean"
    best_value: float | None = None
    main_metrics: dict[str, str] = field(default_factory=dict)
    greater_is_better: dict[str, bool] = field(default_factory=dict)
    train: dict[str, Any] | None = None
    run_id: str | None = None
    finishing: bool = False

    @property
    def trained(self) -> bool:
        """Whether the training ended and saved its final model (it writes `train` only then)."""
        return self.train is not None

    @property
    def finished(self) -> bool:
        """Whether the run is complete and final: its final model saved and every side job of its end
        run (the completion marker is the last write of the record, which drops `finishing`)."""
        return self.train is not None and not self.finishing

    def evaluation(self, step: int) -> dict[str, Any] | None:
        """The evaluation at `step`, if there was one."""
        return next((entry for entry in self.history if entry["step"] == step), None)

    def history_until(self, step: int) -> list[dict[str, Any]]:
        """The evaluations up to `step` (a resume drops those the crashed run made after its checkpoint)."""
        return [entry for entry in self.history if entry["step"] <= step]

    def saved_evaluation(self, load_best_model_at_end: bool = True) -> dict[str, Any] | None:
        """The evaluation of the weights the training saved: the best step's with
        ``load_best_model_at_end``, else the last; None when nothing was evaluated."""
        if not self.history:
            return None
        if load_best_model_at_end and self.best_step is not None:
            best = self.evaluation(self.best_step)
            if best is not None:
                return best
        return self.history[-1]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "history": self.history,
            "best": {"step": self.best_step, "metric": self.best_metric, "value": self.best_value},
            "main_metrics": self.main_metrics,
            "greater_is_better": self.greater_is_better,
        }
        if self.run_id is not None:
            data["run_id"] = self.run_id
        if self.train is not None:
            data["train"] = self.train
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        best = data.get("best") or {}
        # records written before the best metric was configurable: {"step": ..., "eval/mean": ...}
        metric = best.get("metric", "eval/mean")
        return cls(
            history=list(data.get("history") or []),
            best_step=best.get("step"),
            best_metric=metric,
            best_value=best.get("value", best.get(metric)),
            main_metrics=dict(data.get("main_metrics") or {}),
            greater_is_better=dict(data.get("greater_is_better") or {}),
            train=data.get("train"),
            run_id=data.get("run_id"),
        )

    def write(self, directory: str | os.PathLike) -> Path:
        """Write ``metrics.json`` into `directory` (atomically), and `finishing` beside it; returns its path."""
        path, marker = Path(directory) / FILE_NAME, Path(directory) / FINISHING_FILE
        if self.finishing:  # first: a record with `train` must never be read as finished too early
            write_bytes_atomic(marker, b"")
        write_json_atomic(path, self.to_dict())
        if not self.finishing:
            marker.unlink(missing_ok=True)  # the completion marker
        return path

    @classmethod
    def read(cls, directory: str | os.PathLike) -> RunRecord | None:
        """The record in `directory`, or None when there is none.

        Raises:
            HfmtlError: the file is not valid JSON, or `directory` is the root of a staged run (whose
                record is a summary of its stages: the message names the stage that holds the model).
        """
        record = cls.read_file(Path(directory) / FILE_NAME)
        if record is not None:
            record.finishing = (Path(directory) / FINISHING_FILE).is_file()
        return record

    @classmethod
    def read_file(cls, path: str | os.PathLike | None) -> RunRecord | None:
        """The record in the file `path` (e.g. one fetched from the Hub); None for no path or no file."""
        data = None if path is None else read_json(path)
        if data is None:
            return None
        if "stages" in data:
            root = Path(path).parent
            raise HfmtlError(f"{root} is the root of a staged run; use its final model: {data.get('final_model')}")
        return cls.from_dict(data)


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON file as a dict, None when it does not exist; a broken one is a one-line HfmtlError."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise HfmtlError(f"{path} is not valid JSON ({err}): a write was cut short, or it was edited") from err
    if not isinstance(data, dict):
        raise HfmtlError(f"{path} holds {type(data).__name__}, not a JSON object")
    return data


def write_stages_summary(root: str | os.PathLike, stage_dirs: dict[str, Path]) -> dict[str, Any]:
    """Write the staged run's ``<root>/metrics.json``: each finished stage's record by stage name, and
    where the final model is (the last stage's directory)."""
    summary: dict[str, Any] = {"stages": {}}
    for name, directory in stage_dirs.items():
        record = RunRecord.read(directory)
        if record is not None:
            summary["stages"][name] = record.to_dict()
    summary["final_model"] = str(list(stage_dirs.values())[-1])
    write_json_atomic(Path(root) / FILE_NAME, summary)
    return summary
