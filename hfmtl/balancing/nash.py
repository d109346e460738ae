"""Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya 2022, "Multi-Task Learning as
a Bargaining Game").

The update is the Nash bargaining solution g = sum_t alpha_t g_t, with alpha > 0 solving

    M alpha = 1 / alpha   (elementwise; M = G G^T the Gram matrix of the task gradients),

i.e. every task's improvement g_t . g equals 1 / alpha_t. We solve it as the minimisation of the convex
function f(alpha) = 1/2 alpha^T M alpha - sum_t log alpha_t over alpha > 0, whose stationarity
condition is exactly that equation: damped Newton steps alpha <- alpha - step / (1 + lambda) (lambda
the Newton decrement) while lambda > 1/4, full steps after. f is self-concordant (a quadratic plus a log
barrier), so the damped steps never leave alpha > 0 and the method converges globally, then
quadratically (Nesterov & Nemirovski; Boyd & Vandenberghe 2004, section 9.6). The paper instead solves a
sequence of convex problems (concave-convex procedure) with cvxpy; both aim at the same equation.

M is normalised to mean diagonal 1; if its smallest eigenvalue is below `ridge` it is shifted up to
`ridge` (a well-conditioned Gram matrix is solved exactly): when the gradients are linearly dependent
with positive weights summing to 0 the equation has no solution, and the shift keeps f bounded (the weights on those directions grow large, but the update norm is still sqrt(T):
||g||^2 = alpha^T M alpha = sum_t alpha_t (1 / alpha_t) = T). The diagnostics report the residual
max_t |alpha_t (M alpha)_t - 1| on the un-ridged Gram matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import GradientCombiner, _check_number
from .registry import register_balancer


def nash_weights(
    gram: np.ndarray, ridge: float = 1e-8, max_iter: int = 100, tol: float = 1e-14
) -> tuple[np.ndarray, int]:
    """alpha > 0 with gram alpha = 1 / alpha; returns (alpha, Newton iterations).

    `ridge` is the smallest eigenvalue allowed to the Gram matrix normalised to mean diagonal 1; a
    (near) singular one is shifted up to it, which keeps the problem bounded (see the module docstring).
    """
    T = gram.shape[0]
    scale = float(np.mean(np.diag(gram)))
    if scale <= 0:  # every gradient is zero: any alpha gives the zero update
        return np.ones(T), 0
    M = gram / scale
    lowest = float(np.linalg.eigvalsh(M)[0])
    if lowest < ridge:  # lift the spectrum to `ridge` only where it is (near) singular: exact otherwise
        M = M + (ridge - lowest) * np.eye(T)
    alpha = 1.0 / np.sqrt(np.diag(M))  # exact when the gradients are orthogonal
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        grad = M @ alpha - 1.0 / alpha
        hessian = M + np.diag(1.0 / alpha**2)
        step = np.linalg.solve(hessian, grad)
        decrement_sq = float(grad @ step)
        if decrement_sq / 2 <= tol:
            break
        decrement = np.sqrt(max(decrement_sq, 0.0))
        alpha = alpha - (step / (1.0 + decrement) if decrement > 0.25 else step)
    # M was scaled by 1/scale: the weights of the original Gram matrix are alpha / sqrt(scale)
    return alpha / np.sqrt(scale), iterations


@register_balancer("nash_mtl")
class NashMTL(GradientCombiner):
    """Nash-MTL gradient combination; see the module docstring for the math and the solver.

    Scale: ||g|| = sqrt(T) whatever the gradients' norms (the bargaining solution fixes it); with an
    adaptive optimizer this matters little, with SGD tune the learning rate for it.

    Args:
        task_names: the run's tasks.
        ridge: the smallest eigenvalue allowed to the normalised Gram matrix (a singular one is shifted).
        max_iter: Newton iterations (20 are typically plenty).
        seed: unused (the method is deterministic).
    """

    def __init__(self, task_names: Sequence[str], ridge: float = 1e-8, max_iter: int = 100, seed: int = 0):
        super().__init__(task_names, seed)
        self.ridge = _check_number(self.name, "ridge", ridge, low=0.0)
        self.max_iter = int(_check_number(self.name, "max_iter", max_iter, low=1))

    def _solve(self, gram, indices):
        alpha, iterations = nash_weights(gram, self.ridge, self.max_iter)
        residual = float(np.max(np.abs(alpha * (gram @ alpha) - 1.0))) if np.any(np.diag(gram) > 0) else 0.0
        return alpha, {"residual": residual, "iterations": float(iterations)}, None
