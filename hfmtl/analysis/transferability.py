"""Transferability estimates: how well a frozen encoder's features suit a task, without training.

Two estimates, both pure functions of a feature matrix ``(N, D)`` and its labels:

- `logme` (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
  ICML): the log marginal likelihood (evidence) per example of a Bayesian linear model from the
  features to each target dimension, maximised over the prior precision ``alpha`` and the noise
  precision ``beta`` by MacKay's fixed-point iteration on the spectrum of the features. Targets are the
  one-hot columns for classification (the score is their mean) and the value for regression.
- `h_score` (Bao et al. 2019, "An Information-Theoretic Approach to Transferability in Task Transfer
  Learning", ICIP): ``tr(cov(f)^-1 cov(E[f | y]))``, the class separation a linear read-out can see;
  classification only. The inverse is a pseudo-inverse by default; ``shrinkage`` applies the
  regularised covariance that Ibrahim et al. 2022 ("Newer is not always better: rethinking
  transferability metrics, their peculiarities, stability and performance") found more stable.

Higher is better for both; their values compare feature extractors on the same target labels, not
targets. hfmtl/analysis/ranking.py ranks candidate source tasks for a target by them;
hfmtl/analysis/features.py extracts the features of a task's examples from an encoder.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 8))
    >>> y = x @ rng.normal(size=8) + 0.1 * rng.normal(size=200)
    >>> logme(x, y) > logme(rng.normal(size=(200, 8)), y)
    True
    >>> labels = (x[:, 0] > 0).astype(int)
    >>> h_score(x, labels) > h_score(rng.normal(size=(200, 8)), labels)
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

__all__ = ["LogMEResult", "fit_logme", "h_score", "logme"]


# --- LogME --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogMEResult:
    """The fitted evidence of every target dimension.

    Attributes:
        score: the LogME value: the mean over target dimensions of the maximised evidence per example.
        evidence: (K,) maximised log evidence per example, one per target dimension.
        alpha: (K,) prior precision of the weights at the maximum.
        beta: (K,) noise precision at the maximum.
        iterations: fixed-point iterations run (the slowest dimension's).
        converged: whether every dimension met the tolerance before ``max_iter``.
    """

    score: float
    evidence: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    iterations: int
    converged: bool


def _as_float_matrix(features: ArrayLike) -> np.ndarray:
    f = to_numpy(features).astype(np.float64, copy=False)
    if f.ndim != 2:
        raise ValueError(f"features must be a (N, D) matrix, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values")
    return f


def to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _targets(labels: ArrayLike, n: int, regression: bool | None) -> np.ndarray:
    """(N, K) float targets: one-hot columns of the classes present, the value, or a 2-D array as given."""
    y = to_numpy(labels)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} feature rows")
    if y.ndim == 2:  # multi-label (multi-hot) or multi-output regression: one target per column
        return y.astype(np.float64)
    if y.ndim != 1:
        raise ValueError(f"labels must be (N,) or (N, K), got shape {y.shape}")
    if regression is None:
        regression = not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool)
    if regression:
        return y.astype(np.float64)[:, None]
    # only the classes present: an absent class would be an all-zero target, whose evidence grows
    # without bound as alpha -> infinity
    classes, index = np.unique(y, return_inverse=True)
    return np.eye(len(classes))[index.reshape(-1)]


def _spectrum(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues ``sigma`` (D,) of F^T F, coordinates ``z`` (D, K) of the targets on the matching left
    singular vectors of F (0 for null directions), and the squared norm (K,) of each target outside them.

    The eigendecomposition of the smaller Gram matrix (D x D or N x N) costs O(N D min(N, D)), the
    same as LogME's own trick, instead of a full SVD.
    """
    n, d = f.shape
    if n > d:
        sigma, v = np.linalg.eigh(f.T @ f)
        sigma = np.clip(sigma, 0.0, None)
        keep = sigma > sigma.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
        # F^T y = V S U^T y, so the coordinates on U are V^T F^T y / s where s > 0
        projected = v.T @ (f.T @ y)
        z = np.zeros_like(projected)
        z[keep] = projected[keep] / np.sqrt(sigma[keep])[:, None]
        sigma = np.where(keep, sigma, 0.0)
    else:
        sigma_n, u = np.linalg.eigh(f @ f.T)
        sigma_n = np.clip(sigma_n, 0.0, None)
        # U spans all of R^N: every target direction has a coordinate, null ones count as residual
        z = np.zeros((d, y.shape[1]))
        z[:n] = u.T @ y
        sigma = np.zeros(d)
        sigma[:n] = sigma_n
    outside = np.clip((y**2).sum(axis=0) - (z**2).sum(axis=0), 0.0, None)
    return sigma, z, outside


def _evidence(
    sigma: np.ndarray, z: np.ndarray, outside: np.ndarray, n: int, alpha: np.ndarray, beta: np.ndarray
) -> np.ndarray:
    """Log evidence (K,) of each target at (alpha, beta), from the spectrum (Bishop 2006, eq. 3.86)."""
    d = sigma.shape[0]
    denom = alpha[None, :] + beta[None, :] * sigma[:, None]  # (D, K): eigenvalues of A = alpha I + beta F^T F
    m_sq = (beta**2 * (sigma[:, None] * z**2 / denom**2).sum(axis=0)) if d else np.zeros_like(alpha)
    residual = ((alpha[None, :] * z / denom) ** 2).sum(axis=0) + outside
    return (
        0.5 * n * np.log(beta)
        + 0.5 * d * np.log(alpha)
        - 0.5 * n * np.log(2 * np.pi)
        - 0.5 * beta * residual
        - 0.5 * alpha * m_sq
        - 0.5 * np.log(denom).sum(axis=0)
    )


_RESIDUAL_FLOOR = 1e-10


def fit_logme(
    features: ArrayLike,
    labels: ArrayLike,
    *,
    regression: bool | None = None,
    max_iter: int = 1000,
    tol: float = 1e-10,
) -> LogMEResult:
    """Maximise the LogME evidence of `labels` given `features`; see `logme` for the arguments.

    The fixed point (MacKay 1992) of ``gamma = sum_i beta s_i / (alpha + beta s_i)``,
    ``alpha = gamma / m^T m``, ``beta = (N - gamma) / ||y - F m||^2`` is where the evidence's
    derivatives in alpha and beta vanish. When the target is unrelated to the features the maximum lies
    at alpha -> infinity; the iteration then stops when the evidence no longer changes (to `tol`). When
    the features fit the target exactly it lies at beta -> infinity; the residual is then floored at
    1e-10 of the target's squared norm, which bounds beta and the score.

    Returns:
        The score with the per-target evidence, alpha and beta.
    """
    f = _as_float_matrix(features)
    n = f.shape[0]
    if n < 2:
        raise ValueError(f"LogME needs at least 2 examples, got {n}")
    y = _targets(labels, n, regression)
    sigma, z, outside = _spectrum(f, y)
    k = y.shape[1]
    if not ((z**2).sum(axis=0) + outside > 0).all():
        raise ValueError("a target column is all zeros: its evidence has no maximum")
    alpha, beta = np.ones(k), np.ones(k)
    evidence = _evidence(sigma, z, outside, n, alpha, beta)
    iterations, active = 0, np.ones(k, dtype=bool)
    tiny = np.finfo(np.float64).tiny
    # A target the features fit exactly (noise-free, or N <= rank) has its evidence grow without bound as
    # beta -> infinity: floor the residual at a 1e-10 relative noise level, so that beta stops (the score
    # is then high and finite) instead of overflowing.
    residual_floor = np.maximum(_RESIDUAL_FLOOR * (y**2).sum(axis=0), tiny)
    while active.any() and iterations < max_iter:
        iterations += 1
        a, b = alpha[active], beta[active]
        zs, out = z[:, active], outside[active]
        denom = a[None, :] + b[None, :] * sigma[:, None]
        gamma = (b[None, :] * sigma[:, None] / denom).sum(axis=0)
        m_sq = b**2 * (sigma[:, None] * zs**2 / denom**2).sum(axis=0)
        residual = ((a[None, :] * zs / denom) ** 2).sum(axis=0) + out
        new_a = gamma / np.maximum(m_sq, tiny)
        new_b = (n - gamma) / np.maximum(residual, residual_floor[active])
        # gamma = 0 (no signal at all) would give alpha = 0/0: keep alpha growing instead
        new_a = np.where(gamma > 0, new_a, a * 2.0)
        new_evidence = _evidence(sigma, zs, out, n, new_a, new_b)
        done = (np.abs(new_a - a) <= tol * a) & (np.abs(new_b - b) <= tol * b)
        done |= np.abs(new_evidence - evidence[active]) <= tol * np.abs(evidence[active])
        alpha[active], beta[active], evidence[active] = new_a, new_b, new_evidence
        active[np.flatnonzero(active)[done]] = False
    per_example = evidence / n
    return LogMEResult(
        score=float(per_example.mean()),
        evidence=per_example,
        alpha=alpha,
        beta=beta,
        iterations=iterations,
        converged=not active.any(),
    )


def logme(
    features: ArrayLike, labels: ArrayLike, *, regression: bool | None = None, max_iter: int = 1000, tol: float = 1e-10
) -> float:
    """LogME (You et al. 2021): the maximised log evidence per example of a linear model on `features`.

    Invariant to the scale of the features and to any rotation of them (the evidence depends on
    ``F F^T / alpha`` only); scaling a regression target by c shifts the score by ``-log|c|``, so compare
    extractors on the same targets.

    Args:
        features: (N, D) features, numpy or torch.
        labels: (N,) integer class ids (one-hot targets over the classes present; the score is the mean
            over classes), (N,) real values (regression), or (N, K) targets used as given (multi-label
            multi-hot, multi-output regression).
        regression: whether (N,) labels are real values; None infers it from the dtype (integers and
            bools: classification, floats: regression).
        max_iter: fixed-point iterations at most.
        tol: relative tolerance on alpha and beta (or on the evidence) to stop.

    Returns:
        The LogME score (higher: the features suit the task better).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(100, 4))
        >>> round(logme(x, x @ np.ones(4)), 1) > round(logme(x, rng.normal(size=100)), 1)
        True
    """
    return fit_logme(features, labels, regression=regression, max_iter=max_iter, tol=tol).score


# --- H-score --------------------------------------------------------------------------------------


def h_score(
    features: ArrayLike, labels: ArrayLike, *, shrinkage: float | str | None = None, rcond: float = 1e-10
) -> float:
    """H-score (Bao et al. 2019): ``tr(cov(f)^+ cov(E[f | y]))``, the class separation of the features.

    Covariances are over the N examples (1/N normalisation); the between-class covariance is that of
    each example's class mean. The score lies in [0, min(D, C - 1)] and is invariant to any invertible
    linear map of the features.

    Args:
        features: (N, D) features.
        labels: (N,) class ids (any hashable values; classification only).
        shrinkage: None: Moore-Penrose pseudo-inverse of cov(f) (stable when D is large or features are
            collinear). A float in [0, 1]: the inverse of ``(1 - s) cov + s * tr(cov)/D * I``. 'auto':
            the Ledoit-Wolf shrinkage (Ibrahim et al. 2022).
        rcond: relative cut-off of small eigenvalues in the pseudo-inverse.

    Returns:
        The H-score (higher: more separable classes).

    Example:
        >>> h_score(np.array([[0.0], [2.0], [4.0], [6.0]]), np.array([0, 0, 1, 1]))  # (4 / 5)
        0.8
    """
    f = _as_float_matrix(features)
    y = to_numpy(labels)
    if y.ndim != 1 or y.shape[0] != f.shape[0]:
        raise ValueError(f"h_score needs (N,) class labels for {f.shape[0]} rows, got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        raise ValueError("h_score is for classification: labels must be class ids, not real values")
    n, d = f.shape
    f = f - f.mean(axis=0)
    cov = f.T @ f / n
    _, index = np.unique(y, return_inverse=True)
    index = index.reshape(-1)
    counts = np.bincount(index)
    means = np.zeros((len(counts), d))
    np.add.at(means, index, f)
    means /= counts[:, None]
    # cov(E[f|y]) = sum_c p_c mu_c mu_c^T (the class means of centred features average to 0)
    between = (means * (counts / n)[:, None]).T @ means
    if shrinkage is not None:
        if shrinkage == "auto":
            from sklearn.covariance import ledoit_wolf_shrinkage

            shrinkage = float(ledoit_wolf_shrinkage(f, assume_centered=True))
        elif isinstance(shrinkage, str) or not 0.0 <= float(shrinkage) <= 1.0:
            raise ValueError(f"shrinkage={shrinkage!r}: use None, 'auto' or a float in [0, 1]")
        s = float(shrinkage)
        cov = (1.0 - s) * cov + s * (np.trace(cov) / d) * np.eye(d)
    inverse = np.linalg.pinv(cov, rcond=rcond, hermitian=True)
    return float(np.trace(inverse @ between))
