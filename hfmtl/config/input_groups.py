"""Input groups: tasks that read the same rows and train in one encoder pass per batch.

Tasks declare a group with ``input_group: <name>`` (hfmtl/tasks/base.py). The rows of a group are
encoded once per batch and every task's head reads the one output; the sampler draws the group as one
unit (hfmtl/training/input_groups.py). A group's tasks must read the same rows: the same dataset or
data files, the same train split, the same text columns with the same max_length and batch size, and
every task type must allow it (`Task.check_input_group`: multiple choice and QA do not). Anything else
is one `ConfigError` naming the group, the tasks and the difference, before any data is loaded.

Groups are declared, never applied by themselves: a group changes what a step trains and how often each
row is drawn, so a run's trajectory must come from what its config says. `shareable_tasks` only finds
undeclared tasks that could share a pass, for a hint in the log.

Example:
    >>> from hfmtl.config import load_config
    >>> config = load_config("configs/conll_group.yaml")
    >>> training_units(config.tasks, config.model.max_length)
    {'conll': ['ner', 'pos', 'chunk']}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError


def training_units(task_configs: Mapping[str, Any], default_max_length: int) -> dict[str, list[str]]:
    """What the sampler draws: each input group's name -> its tasks, and each other task's name ->
    ``[it]``, in config order (a group at the place of its first task). Checks the groups first.

    Args:
        task_configs: task_name -> its `TaskConfig`.
        default_max_length: ``model.max_length`` (a task's own max_length wins).

    Raises:
        ConfigError: a group cannot share its rows (`check_input_groups`).
    """
    check_input_groups(task_configs, default_max_length)
    units: dict[str, list[str]] = {}
    for name, config in task_configs.items():
        units.setdefault(config.input_group or name, []).append(name)
    return units


def check_input_groups(task_configs: Mapping[str, Any], default_max_length: int) -> None:
    """Every declared group can share its rows (see the module docstring).

    Raises:
        ConfigError: one line naming the group, its tasks and what differs.
    """
    groups: dict[str, list[str]] = {}
    for name, config in task_configs.items():
        if config.input_group is not None:
            groups.setdefault(config.input_group, []).append(name)
    for group, names in groups.items():
        if len(names) == 1:
            raise ConfigError(
                f"tasks.{names[0]}.input_group={group!r} names no other task: an input group needs two or more "
                "tasks that read the same rows (check the spelling, or drop input_group)"
            )
        if group in task_configs:
            raise ConfigError(
                f"input group {group!r} has the name of a task: the sampler draws groups and tasks by name; "
                f"rename the group of tasks {names}"
            )
        first = names[0]
        reference = _row_source(first, task_configs[first], default_max_length)
        for name in names[1:]:
            source = _row_source(name, task_configs[name], default_max_length)
            for key, value in source.items():
                if value != reference[key]:
                    raise ConfigError(
                        f"input group {group!r}: tasks {first!r} and {name!r} differ in {key} ({reference[key]!r} "
                        f"vs {value!r}): the tasks of a group must read the same rows; align them or drop input_group"
                    )


def shareable_tasks(task_configs: Mapping[str, Any], default_max_length: int) -> list[list[str]]:
    """Sets of two or more tasks outside any group that read the same rows and could form one (a hint)."""
    found: dict[tuple, list[str]] = {}
    for name, config in task_configs.items():
        if config.input_group is not None or config.streaming:
            continue
        try:
            source = _row_source(name, config, default_max_length)
        except ConfigError:  # its type cannot share an encoder pass
            continue
        found.setdefault(repr(sorted(source.items())), []).append(name)
    return [names for names in found.values() if len(names) > 1]


def _row_source(name: str, config: Any, default_max_length: int) -> dict[str, Any]:
    """What decides a task's training rows and their encoder inputs; raises ConfigError where the task
    cannot be in a group at all."""
    from ..tasks import Unsupported, build_task, get_task_class  # tasks import torch: late, as in run.py

    try:
        get_task_class(config.type).check_input_group()
    except Unsupported as err:
        raise ConfigError(
            f"tasks.{name}.input_group={config.input_group!r}: task {name!r} {err}, so it cannot share an encoder "
            "pass with other tasks; drop its input_group"
        ) from None
    if config.streaming:
        raise ConfigError(
            f"tasks.{name}.input_group={config.input_group!r}: task {name!r} is streamed, and an input group's rows "
            "are aligned in memory; drop streaming or input_group"
        )
    files = config.data_files or {}
    return {
        "dataset": config.dataset,
        "subset": config.subset,
        "revision": config.revision,
        "train_split": config.train_split,
        "training data files": files.get(config.train_split),
        "text columns": list(build_task(name, config).text_columns().items()),
        "max_length": config.max_length or default_max_length,
        "batch_size": config.batch_size,
    }
