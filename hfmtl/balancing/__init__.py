"""Task balancing: loss weightings and gradient combiners, by name.

Two families, two contracts (see `base`):

- `LossWeighting` — ``balancer({task_name: loss}) -> WeightedLoss(loss, weights)``; the trainer
  backpropagates ``loss``. ``equal``, ``fixed``, ``initial_loss``, ``rlw``, ``uncertainty``, ``dwa``
  (`weighting`), ``gradnorm`` (`gradnorm`), ``famo`` (`famo`).
- `GradientCombiner` — ``balancer(grads (T, P), task_names) -> CombinedGradient(grad, weights, ...)``
  on the per-task gradients of the shared parameters; the trainer writes ``grad`` into their ``.grad``.
  ``pcgrad``, ``gradvac`` (`projection`), ``mgda``, ``cagrad`` (`simplex`), ``imtl_g`` (`imtl`),
  ``nash_mtl`` (`nash`), ``aligned_mtl`` (`aligned`).

Strategies compute; they never own the loop: none calls ``backward``, steps the model's optimizer or
touches ``.grad``. Each is a `torch.nn.Module` with `state_dict()` / `load_state_dict()` for an exact
resume (seeded RNG included) and `parameters()` for those that learn with the model (``uncertainty``).

Add a strategy by writing a subclass in one file here, decorated with ``@register_balancer("name")``,
and importing the file at the bottom of this module.

Example:
    >>> import torch
    >>> from hfmtl.balancing import get_balancer
    >>> dwa = get_balancer("dwa", ["rte", "stsb"], temperature=2.0, window_steps=100)
    >>> out = dwa({"rte": torch.tensor(0.5), "stsb": torch.tensor(2.5)})
    >>> float(out.loss)  # weights 1 until two windows are complete
    3.0
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from ..typed import _suggest
from .base import Balancer, CombinedGradient, GradientCombiner, LossWeighting, WeightedLoss

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


def _balancer_class(name: str) -> type[Balancer]:
    if name not in BALANCERS:
        raise ConfigError(
            f"balancing strategy {name!r} is unknown{_suggest(name, BALANCERS)} (known: {', '.join(sorted(BALANCERS))})"
        )
    return BALANCERS[name]


# Strategies shipped with hfmtl: imported for their @register_balancer side effect.
from . import aligned, famo, gradnorm, imtl, nash, projection, simplex, weighting  # noqa: E402,F401
from .gradnorm import task_gradient_norms  # noqa: E402

__all__ = [
    "BALANCERS",
    "Balancer",
    "CombinedGradient",
    "GradientCombiner",
    "LossWeighting",
    "WeightedLoss",
    "balancer_options",
    "get_balancer",
    "register_balancer",
    "task_gradient_norms",
]
