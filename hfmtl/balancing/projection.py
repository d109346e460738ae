"""Pairwise gradient surgery: PCGrad and GradVac rewrite each task's gradient against the others.

Both work in the Gram matrix M = G G^T of the task gradients: a rewritten gradient is kept as a
coefficient row c_i over the original gradients (g_i' = c_i @ G), so its inner product with g_j is
(c_i @ M)_j and its squared norm c_i @ M @ c_i. The T^2 pair updates then cost O(T^3) on the host
instead of O(T^2 P) on the device, and the combined gradient is one matvec. Both sum the rewritten
gradients (the papers' update): the combined gradient is on the scale of the summed losses.

Task orders are drawn from the strategy's seeded generator, so a run is reproducible and a resumed run
draws the same orders. Both accept any subset of tasks at a step; GradVac keeps its targets per pair of
tasks of the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .base import GradientCombiner, _check_number
from .registry import register_balancer


def _others_in_random_order(i: int, count: int, generator: torch.Generator) -> list[int]:
    return [j for j in torch.randperm(count, generator=generator).tolist() if j != i]


@register_balancer("pcgrad")
class PCGrad(GradientCombiner):
    """PCGrad (Yu, Kumar, Gupta, Levine, Hausman & Finn 2020, "Gradient Surgery for Multi-Task Learning").

    For each task i, and each other task j in a random order: if g_i' . g_j < 0, project g_i' onto the
    normal plane of g_j, g_i' <- g_i' - (g_i' . g_j / ||g_j||^2) g_j (against the *original* g_j, as in
    the paper's algorithm). The update is sum_i g_i'. Pairs that do not conflict are left unchanged, so
    with no conflicts the result is the plain sum of the gradients.

    Cost: one random permutation per task per step; diagnostics count the projections made.

    Args:
        task_names: the run's tasks.
        seed: seeds the random task orders.
    """

    def _solve(self, gram, indices):
        T = len(indices)
        coefficients = np.eye(T)
        projections = 0
        for i in range(T):
            for j in _others_in_random_order(i, T, self.generator):
                if gram[j, j] <= 0:  # a zero gradient defines no plane to project onto
                    continue
                dot = coefficients[i] @ gram[:, j]
                if dot < 0:
                    coefficients[i, j] -= dot / gram[j, j]
                    projections += 1
        return coefficients.sum(axis=0), {"projections": float(projections)}, coefficients


@register_balancer("gradvac")
class GradVac(GradientCombiner):
    """Gradient Vaccine (Wang, Tsvetkov, Firat & Cao 2021, "Gradient Vaccine: Investigating and Improving
    Multi-task Optimization in Massively Multilingual Models").

    Keeps an EMA target phi^_ij of the cosine similarity of each ordered task pair (initially 0). For each
    task i and each other task j in a random order, with phi the cosine of the current g_i' and g_j:
    if phi < phi^_ij, add the multiple of g_j that brings the cosine exactly to the target,

        g_i' <- g_i' + ||g_i'|| (phi^ sqrt(1 - phi^2) - phi sqrt(1 - phi^^2)) / (||g_j|| sqrt(1 - phi^^2)) g_j

    then phi^_ij <- (1 - beta) phi^_ij + beta phi. The update is sum_i g_i'. With all targets at 0 and
    the first steps, it behaves like PCGrad; as the targets rise it also pulls positively-aligned but
    below-typical pairs together.

    We apply it to the whole vector of shared parameters (the paper also studies per-layer
    granularities; the trainer can call the combiner once per parameter group for those).

    Args:
        task_names: the run's tasks.
        beta: the EMA rate of the cosine targets, in [0, 1] (paper: 0.01).
        seed: seeds the random task orders.
    """

    _MAX_TARGET = 1.0 - 1e-6  # sqrt(1 - phi^2) is a divisor

    def __init__(self, task_names: Sequence[str], beta: float = 0.01, seed: int = 0):
        super().__init__(task_names, seed)
        self.beta = _check_number(self.name, "beta", beta, low=0.0, high=1.0)
        self.register_buffer("targets", torch.zeros(self.num_tasks, self.num_tasks, dtype=torch.float64))

    def _solve(self, gram, indices):
        T = len(indices)
        targets = self.targets.detach().cpu().numpy().copy()
        norms = np.sqrt(np.clip(np.diag(gram), 0, None))
        coefficients = np.eye(T)
        adjustments = 0
        for i in range(T):
            for j in _others_in_random_order(i, T, self.generator):
                norm_i = float(np.sqrt(max(coefficients[i] @ gram @ coefficients[i], 0.0)))
                if norms[j] <= 0 or norm_i <= 0:
                    continue
                cosine = float(np.clip(coefficients[i] @ gram[:, j] / (norm_i * norms[j]), -1.0, 1.0))
                a, b = indices[i], indices[j]
                target = min(float(targets[a, b]), self._MAX_TARGET)
                if cosine < target:
                    root_target = np.sqrt(1 - target**2)
                    coefficients[i, j] += (
                        norm_i * (target * np.sqrt(1 - cosine**2) - cosine * root_target) / (norms[j] * root_target)
                    )
                    adjustments += 1
                targets[a, b] = (1 - self.beta) * targets[a, b] + self.beta * cosine
        self.targets.copy_(torch.from_numpy(targets))
        return coefficients.sum(axis=0), {"adjustments": float(adjustments)}, coefficients
