"""Gradient combiners that solve a small problem over the simplex of task weights: MGDA and CAGrad.

Both see the gradients only through their Gram matrix M (T x T), normalised to mean diagonal 1 before
solving (both solutions are invariant to a common scale of the gradients), so the solve costs
microseconds to milliseconds on the host whatever the number of parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize

from .base import GradientCombiner, _check_number, _normalized
from .registry import register_balancer


def _two_point(aa: float, ab: float, bb: float) -> float:
    """argmin over gamma in [0, 1] of ||gamma a + (1 - gamma) b||^2, from a.a, a.b and b.b:
    gamma = clip((b - a).b / ||a - b||^2, 0, 1) (Sener & Koltun 2018, Algorithm 1)."""
    denominator = aa - 2 * ab + bb
    if denominator <= 0:  # a == b: every point of the segment is the same vector
        return 0.5
    return float(np.clip((bb - ab) / denominator, 0.0, 1.0))


def min_norm_weights(gram: np.ndarray, max_iter: int = 1000, tol: float = 1e-12) -> tuple[np.ndarray, int, float]:
    """The convex combination of the gradients with minimum norm: argmin_{w in simplex} w^T M w.

    Two tasks: the closed form of `_two_point`. More: Frank-Wolfe with exact line search (Sener & Koltun
    2018, Algorithm 2), with away steps (Lacoste-Julien & Jaggi 2015) so that it converges linearly when
    the optimum lies on a face of the simplex, where plain Frank-Wolfe zig-zags at a 1/k rate.

    Returns:
        (w, iterations, Frank-Wolfe duality gap on the normalised Gram matrix: an upper bound on
        ||g_w||^2 - min ||g||^2, relative to the mean squared gradient norm).
    """
    T = gram.shape[0]
    if T == 1:
        return np.ones(1), 0, 0.0
    if T == 2:
        gamma = _two_point(gram[0, 0], gram[0, 1], gram[1, 1])
        return np.array([gamma, 1.0 - gamma]), 0, 0.0
    M = _normalized(gram)
    w = np.full(T, 1.0 / T)
    gap, iterations = np.inf, 0
    while iterations < max_iter:
        iterations += 1
        grad = M @ w  # half the gradient of w^T M w: (g_r . g_w) for each task r
        norm_sq = float(w @ grad)
        toward = int(np.argmin(grad))
        support = np.flatnonzero(w > 0)
        away = int(support[np.argmax(grad[support])])
        gap = norm_sq - float(grad[toward])
        if gap <= tol:
            break
        if gap >= grad[away] - norm_sq:  # Frank-Wolfe step toward vertex `toward`
            direction = -w.copy()
            direction[toward] += 1.0
            max_step = 1.0
        else:  # away step: move weight off vertex `away`
            direction = w.copy()
            direction[away] -= 1.0
            max_step = w[away] / (1.0 - w[away]) if w[away] < 1 else np.inf
        curvature = float(direction @ M @ direction)
        slope = float(direction @ grad)
        step = max_step if curvature <= 0 else min(max(-slope / curvature, 0.0), max_step)
        w = np.clip(w + step * direction, 0.0, None)
        w /= w.sum()
    return w, iterations, max(gap, 0.0)


@register_balancer("mgda")
class MGDA(GradientCombiner):
    """MGDA (Désidéri 2012; Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization").

    The update is the minimum-norm point of the convex hull of the task gradients,
    g = sum_t w_t g_t with w = argmin_{w in simplex} ||sum_t w_t g_t||^2 (see `min_norm_weights`): a
    direction that decreases every task's loss, and 0 at a Pareto-stationary point. Scale: a convex
    combination (weights sum to 1), never longer than the shortest gradient.

    MGDA-UB, the paper's cheap variant, solves the same problem on the gradients w.r.t. the shared
    *representation* instead of the shared parameters, then backpropagates sum_t w_t L_t once. It needs
    one input batch shared by all tasks (the representation must be the same tensor for every task): the
    trainer can then pass those gradients as the rows and use ``out.weights`` as loss weights. With one
    batch per task, as in hfmtl's data, pass the shared-parameter gradients.

    Args:
        task_names: the run's tasks.
        max_iter: Frank-Wolfe iterations for more than two tasks.
        seed: unused (the method is deterministic).
    """

    def __init__(self, task_names: Sequence[str], max_iter: int = 1000, seed: int = 0):
        super().__init__(task_names, seed)
        self.max_iter = int(_check_number(self.name, "max_iter", max_iter, low=1))

    def _solve(self, gram, indices):
        w, iterations, gap = min_norm_weights(gram, self.max_iter)
        norm = float(np.sqrt(max(w @ gram @ w, 0.0)))
        return w, {"min_norm": norm, "iterations": float(iterations), "gap": gap}, None


@register_balancer("cagrad")
class CAGrad(GradientCombiner):
    """CAGrad (Liu, Liu, Jin, Stone & Liu 2021, "Conflict-Averse Gradient Descent for Multi-task Learning").

    With g0 = mean_t g_t, the update d maximises the worst task improvement min_t g_t . d within the ball
    ||d - g0|| <= c ||g0||. Its dual, over the simplex,

        min_w F(w) = g_w . g0 + c ||g0|| ||g_w||,   g_w = sum_t w_t g_t,

    gives d = g0 + (c ||g0|| / ||g_w||) g_w. In Gram terms g_w . g0 = w^T M 1 / T, ||g_w||^2 = w^T M w
    and ||g0||^2 = 1^T M 1 / T^2. We solve the dual with scipy's SLSQP (analytic gradient, from the
    uniform point; F is convex). c = 0 is the mean gradient; the paper keeps c in [0, 1) for its
    convergence guarantee and uses 0.4 to 0.5. Scale: the mean gradient's (no rescaling by 1 + c^2).

    Args:
        task_names: the run's tasks.
        c: the radius of the ball around the mean gradient, relative to its norm (>= 0).
        seed: unused (the method is deterministic).
    """

    def __init__(self, task_names: Sequence[str], c: float = 0.4, seed: int = 0):
        super().__init__(task_names, seed)
        self.c = _check_number(self.name, "c", c, low=0.0)

    def _solve(self, gram, indices):
        T = gram.shape[0]
        mean = np.full(T, 1.0 / T)
        M = _normalized(gram)
        mean_norm = float(np.sqrt(max(M.mean(), 0.0)))  # ||g0|| (normalised)
        radius = self.c * mean_norm
        if radius <= 0:
            return mean, {"dual_norm": 0.0}, None
        inner = M.mean(axis=1)  # g_t . g0

        def dual(w):
            norm = np.sqrt(max(w @ M @ w, 1e-30))
            return w @ inner + radius * norm, inner + radius * (M @ w) / norm

        result = minimize(
            dual,
            mean,
            jac=True,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * T,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
            options={"ftol": 1e-12, "maxiter": 200},
        )
        w = np.clip(result.x, 0.0, None)
        w /= w.sum()
        norm = float(np.sqrt(max(w @ M @ w, 0.0)))
        if norm <= 1e-12:  # sum_t w_t g_t = 0: the mean gradient is already conflict-free at the optimum
            return mean, {"dual_norm": 0.0}, None
        return mean + (radius / norm) * w, {"dual_norm": norm}, None
