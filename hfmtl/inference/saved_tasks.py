"""The tasks of a saved model's heads, as prediction needs them: the run config saved beside the
model, each head's task object (its input fields and options) and its task type's predictor.

Example:
    >>> run_config = read_run_config(model_dir)  # doctest: +SKIP
    >>> task, strict = task_for("rte", {"type": "classification", "num_labels": 2}, run_config)  # doctest: +SKIP
    >>> task.config.text_column, strict  # doctest: +SKIP
    ('sentence1', True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields as dataclass_fields
from typing import Any

import yaml
from transformers.utils import cached_file

from ..errors import HfmtlError
from ..tasks import Task, Unsupported, build_task, get_task_class, task_config_from_dict
from ..tasks.prediction import TaskPredictor

RUN_CONFIG_FILE = "config.yaml"
# a placeholder for the dataset a TaskConfig insists on; nothing is ever loaded from it
_NO_DATASET = "<none: inference>"


def task_predictor_class(task_name: str, spec: dict[str, Any]) -> type[TaskPredictor]:
    """The predictor of a head, as its task type defines it.

    Raises:
        HfmtlError: the task type has none (or cannot be imported).
    """
    try:
        return get_task_class(spec["type"], f"tasks.{task_name}.type").predictor_class()
    except Unsupported as err:
        raise HfmtlError(f"task {task_name!r} of type {spec['type']!r} cannot predict: {err}") from None


def task_for(task_name: str, spec: dict[str, Any], run_config: Mapping[str, Any] | None) -> tuple[Task, bool]:
    """The task object of a head: from the run config's section of that task when there is one (then
    `strict`: the fields it was trained with are required), else with the documented default fields."""
    section = ((run_config or {}).get("tasks") or {}).get(task_name)
    if section is not None:
        task = build_task(task_name, task_config_from_dict(task_name, section))
        task.adopt_head_spec(spec)  # also checks that the section's type is the head's
        return task, True
    cls = get_task_class(spec["type"])
    known = {f.name for f in dataclass_fields(cls.config_class)}
    defaults = {k: v for k, v in task_predictor_class(task_name, spec).default_fields.items() if k in known}
    return build_task(task_name, cls.config_class(type=spec["type"], dataset=_NO_DATASET, **defaults)), False


def optional_file(model_name_or_path: str, filename: str, **hub_kwargs: Any) -> str | None:
    """The local path of a file of the model (downloaded if need be), or None if the model has none.

    Raises:
        HfmtlError: the Hub cannot be reached (never silently taken for "no such file").
    """
    try:
        return cached_file(model_name_or_path, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    except OSError as err:
        raise HfmtlError(f"cannot fetch {filename} of {model_name_or_path!r}: {err}".replace("\n", " ")) from err


def read_run_config(model_name_or_path: str, **hub_kwargs: Any) -> dict[str, Any] | None:
    """The run's ``config.yaml`` saved beside the model (a dict), or None when there is none."""
    path = optional_file(model_name_or_path, RUN_CONFIG_FILE, **hub_kwargs)
    if path is None:
        return None
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise HfmtlError(f"{path} is not valid YAML: {err}".replace("\n", " ")) from err
    return data if isinstance(data, dict) else None
