"""IMTL-G (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang 2021, "Towards Impartial Multi-task Learning").

The update g = sum_t alpha_t g_t, with sum_t alpha_t = 1, has the same projection onto every task's
unit gradient u_t = g_t / ||g_t||: g . u_1 = g . u_t for all t. With the (T-1) x P matrices
D = [g_1 - g_t] and U = [u_1 - u_t] (t = 2..T), the paper's closed form is

    alpha_{2:T} = g_1 U^T (D U^T)^-1,   alpha_1 = 1 - sum_{t>=2} alpha_t.

Every entry needed is an entry of the Gram matrix M divided by a norm: g_p . u_q = M_pq / ||g_q||, so
the solve is a (T-1) x (T-1) linear system on the host. We solve it by least squares, which also covers
linearly dependent gradients (where D U^T is singular). Weights may be negative; they sum to 1.
"""

from __future__ import annotations

import numpy as np

from .base import GradientCombiner, _normalized
from .registry import register_balancer


@register_balancer("imtl_g")
class IMTLG(GradientCombiner):
    """IMTL-G gradient combination; see the module docstring.

    A task whose gradient is exactly zero has no direction to be impartial to: it gets weight 0 and the
    others are solved among themselves.

    Args:
        task_names: the run's tasks.
        seed: unused (the method is deterministic).
    """

    def _solve(self, gram, indices):
        T = gram.shape[0]
        M = _normalized(gram)
        norms = np.sqrt(np.clip(np.diag(M), 0.0, None))
        active = np.flatnonzero(norms > 1e-12)
        alpha = np.zeros(T)
        if active.size == 0:
            return np.full(T, 1.0 / T), {}, None
        if active.size == 1:
            alpha[active[0]] = 1.0
            return alpha, {}, None
        sub = M[np.ix_(active, active)]
        projection = sub / norms[active][None, :]  # g_p . u_q
        first, rest = 0, np.arange(1, active.size)
        # (g_1 - g_a) . (u_1 - u_b) for a, b >= 2, and g_1 . (u_1 - u_b)
        dU = (
            projection[first, first]
            - projection[first, rest][None, :]
            - projection[rest, first][:, None]
            + projection[np.ix_(rest, rest)]
        )
        gU = projection[first, first] - projection[first, rest]
        tail = np.linalg.lstsq(dU.T, gU, rcond=None)[0]  # alpha_tail^T (D U^T) = g_1 U^T
        alpha[active[rest]] = tail
        alpha[active[first]] = 1.0 - tail.sum()
        return alpha, {}, None
