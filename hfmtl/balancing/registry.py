"""The registry of balancing strategies: `register_balancer` (a class decorator) and `get_balancer`."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from ..typed import _suggest
from .base import Balancer, GradientCombiner

BALANCERS: dict[str, type[Balancer]] = {}


def register_balancer(name: str):
    """Class decorator: make a `Balancer` subclass available to `get_balancer` as `name`."""

    def decorator(cls: type[Balancer]) -> type[Balancer]:
        if name in BALANCERS:
            raise ValueError(f"balancing strategy {name!r} is registered twice")
        cls.name = name
        BALANCERS[name] = cls
        return cls

    return decorator


def balancer_options(name: str) -> dict[str, Any]:
    """The options of strategy `name` and their defaults (`inspect.Parameter.empty` if required)."""
    parameters = inspect.signature(_balancer_class(name).__init__).parameters
    return {k: p.default for k, p in parameters.items() if k not in ("self", "task_names")}


def get_balancer(name: str, task_names: Sequence[str], **options: Any) -> Balancer:
    """Build the strategy `name` for the run's tasks.

    Args:
        name: a registered name (see `BALANCERS`).
        task_names: every task of the run, in a fixed order.
        **options: the strategy's options (e.g. ``temperature=2.0`` for ``dwa``, ``seed=0``).

    Raises:
        ConfigError: unknown name, unknown or missing option, or an option value out of range.
    """
    cls = _balancer_class(name)
    allowed = balancer_options(name)
    for key in options:
        if key not in allowed:
            raise ConfigError(
                f"balancing {name!r} has no option {key!r}{_suggest(key, allowed)} (options: {', '.join(allowed)})"
            )
    missing = [k for k, v in allowed.items() if v is inspect.Parameter.empty and k not in options]
    if missing:
        raise ConfigError(f"balancing {name!r} needs the option {missing[0]!r} (options: {', '.join(allowed)})")
    return cls(task_names, **options)


def combines_gradients(name: str) -> bool:
    """Whether the balancing method `name` combines per-task gradients (a `GradientCombiner`: it needs one
    backward per task) rather than weighting losses."""
    return issubclass(_balancer_class(name), GradientCombiner)


def _balancer_class(name: str) -> type[Balancer]:
    if name not in BALANCERS:
        raise ConfigError(
            f"balancing strategy {name!r} is unknown{_suggest(name, BALANCERS)} (known: {', '.join(sorted(BALANCERS))})"
        )
    return BALANCERS[name]
