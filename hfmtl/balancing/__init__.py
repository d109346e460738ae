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
and importing the file in this module.

Example:
    >>> import torch
    >>> from hfmtl.balancing import get_balancer
    >>> dwa = get_balancer("dwa", ["rte", "stsb"], temperature=2.0, window_steps=100)
    >>> out = dwa({"rte": torch.tensor(0.5), "stsb": torch.tensor(2.5)})
    >>> float(out.loss)  # weights 1 until two windows are complete
    3.0
"""

# Strategies shipped with hfmtl: imported for their @register_balancer side effect.
from . import aligned, famo, gradnorm, imtl, nash, projection, simplex, weighting  # noqa: F401
from .base import Balancer, CombinedGradient, GradientCombiner, LossWeighting, WeightedLoss
from .gradnorm import task_gradient_norms
from .registry import BALANCERS, balancer_options, combines_gradients, get_balancer, register_balancer

__all__ = [
    "BALANCERS",
    "Balancer",
    "CombinedGradient",
    "GradientCombiner",
    "LossWeighting",
    "WeightedLoss",
    "balancer_options",
    "combines_gradients",
    "get_balancer",
    "register_balancer",
    "task_gradient_norms",
]
