"""Registry of task types.

Add a task type by writing one file here with a `Task` subclass decorated by `@register_task("name")`,
and importing it in this module. A task type defined outside the package needs no change
here: name it by its path, ``type: mypackage.tasks:MyTask`` (or ``mypackage.tasks.MyTask``). Its heads
are saved under that path, so a saved model imports the module again when it is loaded: the module
must be importable there too (installed, or on ``PYTHONPATH``).

Example:
    >>> sorted(TASK_TYPES)
    ['classification', 'multiple_choice', 'question_answering', 'regression', 'token_classification']
"""

# Task types shipped with hfmtl: imported for their @register_task side effect.
from . import classification, multiple_choice, question_answering, token_classification  # noqa: F401
from .base import Task, TaskConfig
from .capabilities import FeatureUnit, StandardHead, Unsupported, UsageSnippet
from .registry import TASK_TYPES, build_task, get_task_class, register_task, task_config_from_dict

__all__ = [
    "TASK_TYPES",
    "FeatureUnit",
    "StandardHead",
    "Task",
    "TaskConfig",
    "Unsupported",
    "UsageSnippet",
    "build_task",
    "get_task_class",
    "register_task",
    "task_config_from_dict",
]
