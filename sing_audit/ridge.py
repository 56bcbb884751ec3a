"""Closed-form ridge regression with scikit-learn's objective, and cross-fitting folds.

Objective (scikit-learn ``Ridge(fit_intercept=True)``)::

    min_{A, c}  Σ_i ‖z_i − A f_i − c‖²  +  α ‖A‖_F²        (intercept not penalised)

Solved through the eigendecomposition of the centred Gram matrix ``G = F_cᵀ F_c``
(m×m), so every α of a grid costs O(m·n) once the decomposition exists. α is chosen by
exact leave-one-out error (the ridge hat-matrix identity, as scikit-learn's ``RidgeCV``
does), summed over all outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: rows of features read (as float64) at a time while fitting
FIT_CHUNK_ROWS = 8192

__all__ = ["RidgeSolution", "fit_ridge", "default_alpha_grid", "cross_fit_folds"]


@dataclass(frozen=True)
class RidgeSolution:
    """``T(f) = coef @ f + intercept``; ``coef`` is n×m, ``intercept`` n."""

    coef: np.ndarray
    intercept: np.ndarray
    alpha: float
    loo_mse: dict[float, float] | None = None

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float64) @ self.coef.T + self.intercept


def default_alpha_grid(gram_eigenvalues: np.ndarray, n_samples: int) -> np.ndarray:
    """A scale-aware grid: 10⁻⁶ … 10² times the mean per-sample feature variance × N."""
    scale = float(np.sum(np.clip(gram_eigenvalues, 0, None))) / max(len(gram_eigenvalues), 1)
    scale = scale if scale > 0 else 1.0
    return scale * np.logspace(-6, 2, 17)


def fit_ridge(
    features: np.ndarray,
    targets: np.ndarray,
    alpha: float | None = None,
    alphas: np.ndarray | None = None,
) -> RidgeSolution:
    """Fit ridge in closed form; choose α by leave-one-out error when ``alpha`` is None.

    :param features: N×m.
    :param targets: N×n.
    :param alpha: a fixed α ≥ 0 (scikit-learn's scale), or None to choose from ``alphas``.
    :param alphas: candidate α > 0 (default :func:`default_alpha_grid`).
    """
    x = features if isinstance(features, np.ndarray) else np.asarray(features)
    z = np.asarray(targets, dtype=np.float64)
    if x.ndim != 2 or z.ndim != 2 or x.shape[0] != z.shape[0]:
        raise ValueError(f"features {x.shape} and targets {z.shape} must be N×m and N×n with the same N")
    n_samples = x.shape[0]
    if n_samples < 2:
        raise ValueError("ridge needs at least 2 samples")
    # Everything below reads the features in row chunks (converted to float64 one chunk at
    # a time): no centred N×m copy and no N×m projection ever exists, only m×m and m×n.
    chunks = [slice(s, min(n_samples, s + FIT_CHUNK_ROWS)) for s in range(0, n_samples, FIT_CHUNK_ROWS)]

    def rows(sl):
        return np.asarray(x[sl], dtype=np.float64)

    x_mean = np.sum([rows(sl).sum(axis=0) for sl in chunks], axis=0) / n_samples
    z_mean = z.mean(axis=0)
    zc = z - z_mean
    gram = np.zeros((x.shape[1], x.shape[1]))
    cross = np.zeros((x.shape[1], z.shape[1]))
    for sl in chunks:
        xc = rows(sl) - x_mean
        gram += xc.T @ xc
        cross += xc.T @ zc[sl]
    loo: dict[float, float] | None = None
    if alpha is not None and alpha > 0:
        # a fixed α needs no spectrum: one Cholesky solve of (G + αI) A = F_cᵀ Z_c
        import scipy.linalg

        coef = scipy.linalg.solve(gram + alpha * np.eye(gram.shape[0]), cross, assume_a="pos", overwrite_a=True)
        coef = coef.T
        intercept = z_mean - coef @ x_mean
        return RidgeSolution(coef=np.ascontiguousarray(coef), intercept=intercept, alpha=float(alpha), loo_mse=None)
    lam, q = np.linalg.eigh(gram)
    lam = np.clip(lam, 0.0, None)
    b = q.T @ cross  # m×n: Qᵀ F_cᵀ Z_c
    if alpha is None:
        grid = np.asarray(alphas if alphas is not None else default_alpha_grid(lam, n_samples), dtype=np.float64)
        if grid.size == 0 or np.any(grid <= 0):
            raise ValueError("alpha grid must hold positive values")
        sq = np.zeros(grid.size)
        for sl in chunks:
            p = (rows(sl) - x_mean) @ q  # chunk×m
            p2 = p * p
            zc_rows = zc[sl]
            for j, a in enumerate(grid):
                d = 1.0 / (lam + a)
                pred = (p * d) @ b
                hat = 1.0 / n_samples + p2 @ d
                resid = (zc_rows - pred) / np.clip(1.0 - hat, 1e-12, None)[:, None]
                sq[j] += float(np.sum(resid * resid))
        loo = {}
        best, best_err = float(grid[0]), np.inf
        for j, a in enumerate(grid):
            err = sq[j] / (n_samples * z.shape[1])
            loo[float(a)] = err
            if err < best_err:
                best, best_err = float(a), err
        alpha = best
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if alpha == 0:
        inv = np.divide(1.0, lam, out=np.zeros_like(lam), where=lam > lam.max(initial=0.0) * 1e-12)
    else:
        inv = 1.0 / (lam + alpha)
    coef = (q * inv) @ b  # m×n
    coef = coef.T
    intercept = z_mean - coef @ x_mean
    return RidgeSolution(coef=np.ascontiguousarray(coef), intercept=intercept, alpha=float(alpha), loo_mse=loo)


def cross_fit_folds(labels: np.ndarray | None, n_samples: int, k: int, seed: int) -> np.ndarray:
    """Assign each of ``n_samples`` images to one of ``k`` folds (N ints in [0, k)).

    Stratified by ``labels`` (scikit-learn ``StratifiedKFold``) when given, so each
    class is spread over the folds; classes smaller than ``k`` are spread as far as they go.
    """
    import warnings

    from sklearn.model_selection import KFold, StratifiedKFold

    if k < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {k}")
    if n_samples < k:
        raise ValueError(f"cannot split {n_samples} images into {k} folds")
    fold = np.empty(n_samples, dtype=np.int64)
    dummy = np.zeros((n_samples, 1))
    if labels is not None and np.unique(np.asarray(labels), return_counts=True)[1].max() < k:
        # every class is smaller than k: deal each class round-robin over the folds,
        # continuing where the previous class stopped so that no fold stays empty
        rng = np.random.default_rng(seed)
        order = rng.permutation(n_samples)
        lab = np.asarray(labels)[order]
        order = order[np.argsort(lab, kind="stable")]
        fold[order] = np.arange(n_samples) % k
        return fold
    if labels is not None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class has only ..."
            splits = list(splitter.split(dummy, np.asarray(labels)))
    else:
        splits = list(KFold(n_splits=k, shuffle=True, random_state=seed).split(dummy))
    for i, (_, test) in enumerate(splits):
        fold[test] = i
    return fold
