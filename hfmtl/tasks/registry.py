"""The registry of task types: `register_task` (a class decorator), `get_task_class` (a registered name
or a dotted path to a Task subclass outside the package), and building a task from its config."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from ..errors import ConfigError
from ..typed import _suggest, build_dataclass
from .base import Task, TaskConfig
from .metrics import check_metric_name

TASK_TYPES: dict[str, type[Task]] = {}


def register_task(type_name: str):
    """Class decorator: make a `Task` subclass available as ``type: <type_name>`` in configs."""

    def decorator(cls: type[Task]) -> type[Task]:
        if type_name in TASK_TYPES:
            raise ValueError(f"task type {type_name!r} is registered twice")
        cls.type_name = type_name
        TASK_TYPES[type_name] = cls
        return cls

    return decorator


def get_task_class(type_name: str, key: str = "type") -> type[Task]:
    """The Task class for a registered type name or a ``module:Class`` / ``module.Class`` path.

    Raises:
        ConfigError: an unknown name, a module that cannot be imported, or a path that names no Task
            subclass (one line, naming `key`).
    """
    if type_name in TASK_TYPES:
        return TASK_TYPES[type_name]
    if ":" in type_name or "." in type_name:
        return _import_task_class(type_name, key)
    raise ConfigError(
        f"{key}={type_name!r} is not a task type{_suggest(type_name, TASK_TYPES)} "
        f"(known: {', '.join(sorted(TASK_TYPES))}; or a dotted path to a Task subclass)"
    )


def _import_task_class(path: str, key: str) -> type[Task]:
    module_name, _, qualname = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{key}={path!r}: module {module_name!r} cannot be imported ({reason}); the module that defines "
            "this task type must be importable here (installed, or on PYTHONPATH)"
        ) from err
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if target is None:
        raise ConfigError(f"{key}={path!r}: module {module_name!r} has no {qualname!r}")
    if not (isinstance(target, type) and issubclass(target, Task)):
        raise ConfigError(f"{key}={path!r} is not a subclass of hfmtl.tasks.Task")
    if inspect.isabstract(target):
        missing = ", ".join(sorted(target.__abstractmethods__))
        raise ConfigError(f"{key}={path!r} is abstract: it does not implement {missing}")
    return target


def task_config_from_dict(name: str, data: Any) -> TaskConfig:
    """Build the typed config of task `name` from its YAML mapping (its `type` picks the class)."""
    prefix = f"tasks.{name}"
    if not name.isidentifier():
        raise ConfigError(f"task name {name!r} must be a Python identifier (letters, digits, _)")
    if not isinstance(data, dict) or "type" not in data:
        raise ConfigError(f"{prefix} needs a `type:` (one of {', '.join(sorted(TASK_TYPES))})")
    cls = get_task_class(str(data["type"]), f"{prefix}.type")
    try:
        config = build_dataclass(cls.config_class, data, prefix)
    except ConfigError as err:
        # checks inside a task config name the bare field; make the key fully dotted
        message = str(err)
        raise ConfigError(message if message.startswith(prefix) else f"{prefix}.{message}") from err
    for i, metric in enumerate(config.metrics or []):
        check_metric_name(f"{prefix}.metrics[{i}]", metric)
    return config


def build_task(name: str, config: TaskConfig) -> Task:
    """Instantiate the Task object for a validated task config."""
    return get_task_class(config.type)(name, config)
