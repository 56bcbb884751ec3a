"""Closed-form ridge regression with scikit-learn's objective, and cross-fitting folds.

Objective (scikit-learn ``Ridge(fit_intercept=True)``)::

    min_{A, c}  Σ_i ‖z_i − A f_i − c‖²  +  α ‖A‖_F²        (intercept not penalised)

A fixed α is one Cholesky solve with the smaller centred Gram matrix, ``G = F_cᵀ F_c``
(m×m) or ``K = F_c F_cᵀ`` (N×N).
α is chosen by exact leave-one-out error (the ridge hat-matrix identity, as
scikit-learn's ``RidgeCV`` does), summed over all outputs, through the eigendecomposition
of the smaller Gram matrix: ``F_cᵀ F_c`` (m×m) when N ≥ m, ``F_c F_cᵀ`` (N×N) when N < m.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: rows of features read (as float64) at a time while fitting
FIT_CHUNK_ROWS = 8192

__all__ = ["RidgeSolution", "fit_ridge", "fit_ridge_folds", "default_alpha_grid", "cross_fit_folds"]


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

    :param features: N×m, any float dtype (memory-mapped float32 is fine: rows are read
        and converted to float64 in chunks of :data:`FIT_CHUNK_ROWS`).
    :param targets: N×n.
    :param alpha: a fixed α ≥ 0 (scikit-learn's scale), or None to choose from ``alphas``.
    :param alphas: candidate α > 0 (default :func:`default_alpha_grid`).

    Cost, with G candidate α: a fixed α costs N·m² + m³/3 (the m×m Gram and one Cholesky
    solve) when N ≥ m and N²·m + N³/3 (the N×N Gram's) when N < m; α by leave-one-out costs N·m² + m³ + G·N·m·n when N ≥ m (the m×m
    Gram's eigendecomposition) and N²·m + N³ + G·N²·n when N < m (the N×N Gram's).
    """
    x = features if isinstance(features, np.ndarray) else np.asarray(features)
    z = np.asarray(targets, dtype=np.float64)
    if x.ndim != 2 or z.ndim != 2 or x.shape[0] != z.shape[0]:
        raise ValueError(f"features {x.shape} and targets {z.shape} must be N×m and N×n with the same N")
    n_samples = x.shape[0]
    if n_samples < 2:
        raise ValueError("ridge needs at least 2 samples")
    if alpha is not None and alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if (alpha is None or alpha > 0) and _use_dual(n_samples, x.shape[1]):
        return _fit_ridge_dual(x, z, alpha, alphas)
    # Everything below reads the features in row chunks (converted to float64 one chunk at
    # a time): no centred N×m copy and no N×m projection ever exists, only m×m and m×n.
    chunks = _row_slices(n_samples)

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
        gram[np.diag_indices(gram.shape[0])] += alpha
        coef = _solve_pos(gram, cross).T
        intercept = z_mean - coef @ x_mean
        return RidgeSolution(coef=np.ascontiguousarray(coef), intercept=intercept, alpha=float(alpha), loo_mse=None)
    lam, q = np.linalg.eigh(gram)
    del gram
    lam = np.clip(lam, 0.0, None)
    b = q.T @ cross  # m×n: Qᵀ F_cᵀ Z_c
    if alpha is None:
        grid = _alpha_grid(alphas, lam, n_samples)
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
        loo, alpha = _pick_alpha(grid, sq, n_samples * z.shape[1])
    if alpha == 0:
        inv = np.divide(1.0, lam, out=np.zeros_like(lam), where=lam > lam.max(initial=0.0) * 1e-12)
    else:
        inv = 1.0 / (lam + alpha)
    coef = (q * inv) @ b  # m×n
    coef = coef.T
    intercept = z_mean - coef @ x_mean
    return RidgeSolution(coef=np.ascontiguousarray(coef), intercept=intercept, alpha=float(alpha), loo_mse=loo)


def fit_ridge_folds(features: np.ndarray, targets: np.ndarray, folds: np.ndarray, alpha: float) -> list[RidgeSolution]:
    """Cross-fitting with a fixed α > 0: the solution of :func:`fit_ridge` on the rows
    with ``folds != k``, for every fold k, from one pass over the rows.

    Each fold's sums (Σx, Σz, Σxxᵀ, Σxzᵀ over rows shifted by the overall mean, so
    centring later cancels little) are taken once; the training set of fold k is the
    total minus fold k. That is N·m² Gram work for all K folds instead of (K−1)·N·m²,
    and K·m² memory. The caller ensures every training set has N_k ≥ m rows (the primal
    case; see :func:`fit_ridge` for N < m).
    """
    if not alpha > 0:
        raise ValueError(f"fit_ridge_folds needs a fixed alpha > 0, got {alpha}")
    x = features if isinstance(features, np.ndarray) else np.asarray(features)
    z = np.asarray(targets, dtype=np.float64)
    folds = np.asarray(folds, dtype=np.int64)
    n_samples, m = x.shape
    k_folds = int(folds.max()) + 1
    chunks = _row_slices(n_samples)

    def rows(sl):
        return np.asarray(x[sl], dtype=np.float64)

    shift = np.sum([rows(sl).sum(axis=0) for sl in chunks], axis=0) / n_samples
    zshift = z.mean(axis=0)
    count = np.bincount(folds, minlength=k_folds)
    sx = np.zeros((k_folds, m))
    sz = np.zeros((k_folds, z.shape[1]))
    xx = np.zeros((k_folds, m, m))
    xz = np.zeros((k_folds, m, z.shape[1]))
    for sl in chunks:
        xs, zs, fk = rows(sl) - shift, z[sl] - zshift, folds[sl]
        for k in np.unique(fk):
            sel = fk == k
            a, b = xs[sel], zs[sel]
            sx[k] += a.sum(axis=0)
            sz[k] += b.sum(axis=0)
            xx[k] += a.T @ a
            xz[k] += a.T @ b
    out = []
    tot_sx, tot_sz, tot_xx, tot_xz = sx.sum(axis=0), sz.sum(axis=0), xx.sum(axis=0), xz.sum(axis=0)
    for k in range(k_folds):
        n_k = n_samples - count[k]
        mean_x = (tot_sx - sx[k]) / n_k
        mean_z = (tot_sz - sz[k]) / n_k
        gram = tot_xx - xx[k] - n_k * np.outer(mean_x, mean_x)
        cross = tot_xz - xz[k] - n_k * np.outer(mean_x, mean_z)
        gram[np.diag_indices(m)] += alpha
        coef = _solve_pos(gram, cross).T
        intercept = (mean_z + zshift) - coef @ (mean_x + shift)
        out.append(RidgeSolution(coef=np.ascontiguousarray(coef), intercept=intercept, alpha=float(alpha)))
    return out


def _solve_pos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a⁻¹ b`` for a symmetric positive definite ``a`` (overwritten) by its Cholesky factor.

    ``scipy.linalg.solve(assume_a="pos")`` does the same factorisation and also estimates
    the condition number (and, in recent scipy, goes through a batched wrapper), which
    doubled the time of each fold's 2048×2048 solve; the solution is the same to rounding.
    A matrix that is not positive definite raises ``LinAlgError`` as before."""
    import scipy.linalg

    factor = scipy.linalg.cho_factor(a, lower=False, overwrite_a=True, check_finite=False)
    return scipy.linalg.cho_solve(factor, b, check_finite=False)


def _use_dual(n_samples: int, n_features: int) -> bool:
    """Search α through the N×N Gram when it is the smaller one."""
    return n_samples < n_features


def _row_slices(n: int) -> list[slice]:
    return [slice(s, min(n, s + FIT_CHUNK_ROWS)) for s in range(0, n, FIT_CHUNK_ROWS)]


def _alpha_grid(alphas, gram_eigenvalues: np.ndarray, n_samples: int) -> np.ndarray:
    grid = np.asarray(alphas if alphas is not None else default_alpha_grid(gram_eigenvalues, n_samples), dtype=np.float64)
    if grid.size == 0 or np.any(grid <= 0):
        raise ValueError("alpha grid must hold positive values")
    return grid


def _pick_alpha(grid: np.ndarray, sq: np.ndarray, count: int) -> tuple[dict[float, float], float]:
    """The LOO mean squared error per α and the first α with the smallest (as ``RidgeCV``)."""
    loo: dict[float, float] = {}
    best, best_err = float(grid[0]), np.inf
    for j, a in enumerate(grid):
        err = sq[j] / count
        loo[float(a)] = err
        if err < best_err:
            best, best_err = float(a), err
    return loo, best


def _fit_ridge_dual(x: np.ndarray, z: np.ndarray, alpha: float | None, alphas) -> RidgeSolution:
    """Ridge for N < m through the N×N Gram ``K = F_c F_cᵀ = U Λ Uᵀ``.

    A fixed α > 0 is one Cholesky solve ``A = F_cᵀ (K + αI)⁻¹ Z_c``; α by leave-one-out
    uses the eigendecomposition.

    Same numbers as the m×m path (the nonzero spectra of ``F_cᵀF_c`` and ``F_cF_cᵀ`` agree):
    predictions ``U diag(λ/(λ+α)) Uᵀ Z_c``, hat diagonal ``1/N + Σ_j U_ij² λ_j/(λ_j+α)``
    (U holds all N eigenvectors, so residuals and ``1 − hat`` are formed without cancellation),
    and ``A = F_cᵀ U diag(1/(λ+α)) Uᵀ Z_c``. N×m is at most m×m here, so it is held.
    """
    n_samples, m = x.shape
    xc = np.asarray(x, dtype=np.float64)
    x_mean = xc.mean(axis=0)
    xc = xc - x_mean
    z_mean = z.mean(axis=0)
    zc = z - z_mean
    if alpha is not None:
        kernel = xc @ xc.T
        kernel[np.diag_indices(n_samples)] += alpha
        dual = _solve_pos(kernel, zc)
        coef = (xc.T @ dual).T
        intercept = z_mean - coef @ x_mean
        return RidgeSolution(coef=np.ascontiguousarray(coef), intercept=intercept, alpha=float(alpha), loo_mse=None)
    lam, u = np.linalg.eigh(xc @ xc.T)
    # eigenvalues at rounding level are zeros (the centring direction 1/√N is one): left
    # at ~eps·λ_max they would spoil 1 − hat ≈ α/λ at small α through the 1/N it cancels
    lam[lam <= lam.max(initial=0.0) * max(x.shape) * np.finfo(np.float64).eps] = 0.0
    # the m×m Gram has the same nonzero eigenvalues plus m − N zeros: same default grid
    grid = _alpha_grid(alphas, np.concatenate([lam, np.zeros(m - n_samples)]), n_samples)
    uz = u.T @ zc  # N×n
    u2 = u * u
    sq = np.zeros(grid.size)
    for j, a in enumerate(grid):
        # U is a full orthonormal basis, so Z_c − prediction = U diag(α/(λ+α)) Uᵀ Z_c and
        # 1 − hat = Σ_j U_ij² α/(λ_j+α) − 1/N: no cancellation at small α
        keep = a / (lam + a)
        resid = (u * keep) @ uz
        resid /= np.clip(u2 @ keep - 1.0 / n_samples, 1e-12, None)[:, None]
        sq[j] = float(np.sum(resid * resid))
    loo, alpha = _pick_alpha(grid, sq, n_samples * z.shape[1])
    coef = (xc.T @ (u * (1.0 / (lam + alpha)))) @ uz  # m×n
    coef = coef.T
    intercept = z_mean - coef @ x_mean
    return RidgeSolution(coef=np.ascontiguousarray(coef), intercept=intercept, alpha=float(alpha), loo_mse=loo)


def cross_fit_folds(labels: np.ndarray | None, n_samples: int, k: int, seed: int) -> np.ndarray:
    """Assign each of ``n_samples`` images to one of ``k`` folds (N ints in [0, k)).

    Stratified by ``labels`` when given, so each class is spread over the folds; classes
    smaller than ``k`` are spread as far as they go. The assignment is scikit-learn's
    ``StratifiedKFold(k, shuffle=True, random_state=seed)`` (``KFold`` without labels),
    computed here without importing scikit-learn (tests pin the equality).
    """
    if k < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {k}")
    if n_samples < k:
        raise ValueError(f"cannot split {n_samples} images into {k} folds")
    fold = np.empty(n_samples, dtype=np.int64)
    if labels is not None and np.unique(np.asarray(labels), return_counts=True)[1].max() < k:
        # every class is smaller than k: deal each class round-robin over the folds,
        # continuing where the previous class stopped so that no fold stays empty
        rng = np.random.default_rng(seed)
        order = rng.permutation(n_samples)
        lab = np.asarray(labels)[order]
        order = order[np.argsort(lab, kind="stable")]
        fold[order] = np.arange(n_samples) % k
        return fold
    rng = np.random.RandomState(seed)
    if labels is None:
        # KFold: shuffle the indices, then consecutive blocks (the first n % k one larger)
        indices = np.arange(n_samples)
        rng.shuffle(indices)
        sizes = np.full(k, n_samples // k, dtype=np.int64)
        sizes[: n_samples % k] += 1
        fold[indices] = np.repeat(np.arange(k), sizes)
        return fold
    y = np.asarray(labels).reshape(-1)
    if y.shape[0] != n_samples:
        raise ValueError(f"labels have {y.shape[0]} entries for {n_samples} images")
    # StratifiedKFold: classes numbered by first appearance; each class's share of every
    # fold from a round robin over the sorted labels; then, class by class in that order,
    # its fold numbers (in blocks) shuffled and handed to its members in index order
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    _, class_perm = np.unique(first, return_inverse=True)
    encoded = class_perm[inverse.reshape(-1)]
    n_classes = len(first)
    y_order = np.sort(encoded)
    allocation = np.asarray([np.bincount(y_order[i::k], minlength=n_classes) for i in range(k)])
    members = np.argsort(encoded, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(encoded, minlength=n_classes))])
    folds_of = np.arange(k)
    for c in range(n_classes):
        folds_for_class = folds_of.repeat(allocation[:, c])
        rng.shuffle(folds_for_class)
        fold[members[bounds[c] : bounds[c + 1]]] = folds_for_class
    return fold
