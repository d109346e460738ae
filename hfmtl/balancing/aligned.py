"""Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin 2023, "Independent Component Alignment for
Multi-Task Learning").

The stability of the linear system of gradients G (T x P, one row per task) is measured by its
condition number sigma_max / sigma_min. Aligned-MTL replaces G by the matrix with the same singular
vectors and every singular value equal to sigma_min (condition number 1: no dominating and no
conflicting components), then applies the pre-defined task weights w:

    M = G G^T = V diag(lambda) V^T,   B = sqrt(lambda_min) V diag(lambda)^-1/2 V^T,
    G_aligned = B G,   g = w^T G_aligned = (B w)^T G

(G = V diag(sqrt(lambda)) U^T, so B G = sigma_min V U^T.) Only the eigen-decomposition of the T x T Gram
matrix is needed. When the gradients are linearly dependent (rank r < T) the alignment acts on their
span: eigenvalues below `tol` times the largest are dropped and sigma_min is the smallest kept one.
The default w = 1/T is the paper's uniform trade-off (mean scale).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .base import GradientCombiner, _check_number, _check_task_weights
from .registry import register_balancer


@register_balancer("aligned_mtl")
class AlignedMTL(GradientCombiner):
    """Aligned-MTL gradient combination; see the module docstring.

    ``out.coefficients`` is B: row t is task t's aligned gradient as a combination of the input rows.

    Args:
        task_names: the run's tasks.
        weights: task_name -> pre-defined weight w_t (default 1/T each); normalised over the tasks of a
            step to sum to 1 when a subset is given.
        tol: eigenvalues of the Gram matrix below `tol` times the largest are outside the span (1e-6:
            singular values under 1e-3 of the largest). Much smaller would let the rounding noise of a
            float32 Gram matrix (~1e-7 relative) count as a direction, and sigma_min, the scale of the
            whole update, would collapse to that noise.
        seed: unused (the method is deterministic).
    """

    def __init__(
        self,
        task_names: Sequence[str],
        weights: Mapping[str, float] | None = None,
        tol: float = 1e-6,
        seed: int = 0,
    ):
        super().__init__(task_names, seed)
        values = (
            [1.0] * self.num_tasks
            if weights is None
            else _check_task_weights(self.name, "weights", weights, self.task_names)
        )
        if sum(values) <= 0:
            raise ConfigError(f"balancing {self.name!r}: weights must not all be 0")
        self.register_buffer("task_weights", torch.tensor(values, dtype=torch.float64))
        self.tol = _check_number(self.name, "tol", tol, low=0.0, high=1.0)

    def _solve(self, gram, indices):
        w = self.task_weights.cpu().numpy()[indices]
        w = w / w.sum() if w.sum() > 0 else np.full(len(indices), 1.0 / len(indices))
        eigenvalues, vectors = np.linalg.eigh((gram + gram.T) / 2)
        keep = eigenvalues > self.tol * max(float(eigenvalues[-1]), 0.0)
        if not keep.any():  # every gradient is zero
            return w, {"condition_number": 1.0, "rank": 0.0}, np.eye(len(indices))
        kept, basis = eigenvalues[keep], vectors[:, keep]
        B = np.sqrt(kept.min()) * (basis / np.sqrt(kept)) @ basis.T
        diagnostics = {"condition_number": float(np.sqrt(kept.max() / kept.min())), "rank": float(keep.sum())}
        return B @ w, diagnostics, B
