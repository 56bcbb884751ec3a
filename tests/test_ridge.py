"""Closed-form ridge against scikit-learn, exact leave-one-out, and cross-fitting folds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Ridge, RidgeCV

from sing_audit.ridge import RidgeSolution, cross_fit_folds, default_alpha_grid, fit_ridge

SETTINGS = settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**32 - 1)


def _problem(seed: int, n: int, m: int, k: int, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, m)) * rng.uniform(0.5, 3.0, size=m) + rng.standard_normal(m)
    a = rng.standard_normal((k, m))
    z = x @ a.T + rng.standard_normal(k) * 2 + noise * rng.standard_normal((n, k))
    return x, z


# --------------------------------------------------------------------------- fixed alpha


@SETTINGS
@given(
    seed=seeds,
    shape=st.sampled_from([(40, 5), (25, 12), (8, 20), (5, 30)]),  # N > m and N < m
    k=st.integers(1, 4),
    alpha=st.sampled_from([1e-3, 0.1, 1.0, 10.0, 300.0]),
)
def test_fixed_alpha_matches_sklearn_ridge(seed, shape, k, alpha):
    n, m = shape
    x, z = _problem(seed, n, m, k)
    sol = fit_ridge(x, z, alpha=alpha)
    ref = Ridge(alpha=alpha, fit_intercept=True, solver="svd").fit(x, z)
    assert isinstance(sol, RidgeSolution)
    assert sol.coef.shape == (k, m) and sol.intercept.shape == (k,)
    assert sol.alpha == alpha and sol.loo_mse is None
    ref_coef = np.asarray(ref.coef_).reshape(k, m)  # scikit-learn ravels a single target
    scale = max(1.0, np.abs(ref_coef).max())
    np.testing.assert_allclose(sol.coef, ref_coef, rtol=0, atol=1e-8 * scale)
    ref_icpt = np.asarray(ref.intercept_).reshape(k)
    np.testing.assert_allclose(sol.intercept, ref_icpt, rtol=0, atol=1e-8 * max(1.0, np.abs(ref_icpt).max()))
    np.testing.assert_allclose(sol.predict(x), np.asarray(ref.predict(x)).reshape(n, k), rtol=0, atol=1e-7 * max(1.0, np.abs(z).max()))


def test_alpha_zero_on_full_rank_data_is_least_squares():
    x, z = _problem(0, 50, 6, 3, noise=1.0)
    sol = fit_ridge(x, z, alpha=0.0)
    design = np.hstack([x, np.ones((50, 1))])
    beta, *_ = np.linalg.lstsq(design, z, rcond=None)
    np.testing.assert_allclose(sol.coef, beta[:-1].T, atol=1e-9)
    np.testing.assert_allclose(sol.intercept, beta[-1], atol=1e-9)


def test_exact_linear_map_is_recovered_without_noise():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 4))
    a = rng.standard_normal((3, 4))
    c = np.array([1.0, -2.0, 0.5])
    sol = fit_ridge(x, x @ a.T + c, alpha=0.0)
    np.testing.assert_allclose(sol.coef, a, atol=1e-10)
    np.testing.assert_allclose(sol.intercept, c, atol=1e-10)


def test_intercept_is_not_penalised():
    """With a huge α the map vanishes but the intercept is the target mean (scikit-learn's objective)."""
    x, z = _problem(2, 30, 5, 2)
    sol = fit_ridge(x, z, alpha=1e12)
    assert np.abs(sol.coef).max() < 1e-6
    np.testing.assert_allclose(sol.intercept, z.mean(axis=0), atol=1e-5)


# --------------------------------------------------------------------------- alpha by LOO


def _brute_force_loo(x, z, alpha):
    n = x.shape[0]
    errs = []
    for i in range(n):
        keep = np.arange(n) != i
        r = Ridge(alpha=alpha, fit_intercept=True, solver="svd").fit(x[keep], z[keep])
        errs.append((z[i] - r.predict(x[i : i + 1])[0]) ** 2)
    return float(np.mean(errs))


@pytest.mark.parametrize("shape", [(12, 3), (9, 14)])
def test_loo_mse_equals_brute_force_leave_one_out(shape):
    n, m = shape
    x, z = _problem(3, n, m, 2, noise=0.5)
    grid = np.array([0.01, 0.3, 5.0, 80.0])
    sol = fit_ridge(x, z, alphas=grid)
    assert set(sol.loo_mse) == {float(a) for a in grid}
    for a in grid:
        assert sol.loo_mse[float(a)] == pytest.approx(_brute_force_loo(x, z, a), rel=1e-8, abs=1e-12)
    best = min(sol.loo_mse, key=sol.loo_mse.get)
    assert sol.alpha == best
    # the final fit at the chosen alpha is the plain fixed-alpha fit
    fixed = fit_ridge(x, z, alpha=best)
    np.testing.assert_allclose(sol.coef, fixed.coef, atol=1e-12)
    np.testing.assert_allclose(sol.intercept, fixed.intercept, atol=1e-12)


@pytest.mark.parametrize("seed,shape", [(0, (40, 6)), (1, (30, 10)), (2, (15, 25)), (3, (60, 3)), (4, (20, 20))])
def test_chosen_alpha_matches_sklearn_ridgecv(seed, shape):
    n, m = shape
    x, z = _problem(seed, n, m, 3, noise=2.0)
    grid = np.logspace(-3, 3, 13)
    sol = fit_ridge(x, z, alphas=grid)
    ref = RidgeCV(alphas=grid, store_cv_results=True).fit(x, z)
    ref_loo = ref.cv_results_.mean(axis=(0, 1))  # N × n_targets × n_alphas
    ours = np.array([sol.loo_mse[float(a)] for a in grid])
    np.testing.assert_allclose(ours, ref_loo, rtol=1e-6)
    if sol.alpha != ref.alpha_:  # legitimate only on a tie
        assert sol.loo_mse[sol.alpha] == pytest.approx(sol.loo_mse[float(ref.alpha_)], rel=1e-9)
    np.testing.assert_allclose(sol.coef, ref.coef_, atol=1e-7 * max(1.0, np.abs(ref.coef_).max()))


def test_default_grid_is_scale_aware_and_used():
    x, z = _problem(5, 30, 4, 2)
    lam = np.linalg.eigvalsh((x - x.mean(0)).T @ (x - x.mean(0)))
    grid = default_alpha_grid(lam, 30)
    assert grid.shape == (17,) and np.all(grid > 0) and np.all(np.diff(grid) > 0)
    assert grid[0] == pytest.approx(lam.sum() / 4 * 1e-6)
    assert grid[-1] == pytest.approx(lam.sum() / 4 * 1e2)
    # scaling the features by 10 scales the grid by 100
    np.testing.assert_allclose(default_alpha_grid(lam * 100, 30), grid * 100)
    sol = fit_ridge(x, z)
    assert len(sol.loo_mse) == 17
    assert any(sol.alpha == pytest.approx(g) for g in grid)
    # a zero Gram still gives a positive grid
    assert np.all(default_alpha_grid(np.zeros(3), 5) > 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alphas": np.array([])},
        {"alphas": np.array([0.0, 1.0])},
        {"alphas": np.array([-1.0])},
        {"alpha": -0.5},
    ],
)
def test_bad_alphas_raise(kwargs):
    x, z = _problem(0, 10, 3, 2)
    with pytest.raises(ValueError):
        fit_ridge(x, z, **kwargs)


@pytest.mark.parametrize(
    "x,z",
    [
        (np.ones((5, 3)), np.ones((4, 2))),  # N differs
        (np.ones(5), np.ones((5, 2))),  # 1-D features
        (np.ones((5, 3)), np.ones(5)),  # 1-D targets
        (np.ones((1, 3)), np.ones((1, 2))),  # one sample
    ],
)
def test_bad_shapes_raise(x, z):
    with pytest.raises(ValueError):
        fit_ridge(x, z, alpha=1.0)


# --------------------------------------------------------------------------- folds


@SETTINGS
@given(
    seed=seeds,
    counts=st.lists(st.integers(3, 15), min_size=1, max_size=6),
    k=st.integers(2, 3),
)
def test_stratified_folds_cover_every_sample_once_and_balance_classes(seed, counts, k):
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(labels)
    n = labels.size
    folds = cross_fit_folds(labels, n, k, seed=seed % 1000)
    assert folds.shape == (n,)
    assert folds.min() >= 0 and folds.max() < k
    assert set(np.unique(folds)) == set(range(k))  # no empty fold
    for c in range(len(counts)):
        per_fold = np.bincount(folds[labels == c], minlength=k)
        assert per_fold.sum() == counts[c]
        assert per_fold.max() - per_fold.min() <= 1
    np.testing.assert_array_equal(cross_fit_folds(labels, n, k, seed=seed % 1000), folds)


def test_folds_deterministic_per_seed_and_differ_across_seeds():
    labels = np.repeat(np.arange(4), 25)
    a = cross_fit_folds(labels, 100, 5, seed=0)
    b = cross_fit_folds(labels, 100, 5, seed=0)
    c = cross_fit_folds(labels, 100, 5, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@SETTINGS
@given(n=st.integers(2, 60), data=st.data())
def test_unlabelled_folds_partition_evenly(n, data):
    k = data.draw(st.integers(2, min(n, 8)))
    folds = cross_fit_folds(None, n, k, seed=3)
    counts = np.bincount(folds, minlength=k)
    assert counts.sum() == n
    assert counts.min() >= 1 and counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(cross_fit_folds(None, n, k, seed=3), folds)


def test_folds_with_some_small_classes():
    """A class smaller than k is spread over as many folds as it has images."""
    labels = np.array([0] * 20 + [1] * 2)
    folds = cross_fit_folds(labels, 22, 5, seed=0)
    assert len(set(folds[labels == 1])) == 2
    assert np.bincount(folds[labels == 0], minlength=5).tolist() == [4] * 5


def test_folds_when_every_class_is_smaller_than_k():
    labels = np.repeat(np.arange(4), 3)  # 4 classes × 3 images, 5 folds
    folds = cross_fit_folds(labels, 12, 5, seed=0)
    assert np.bincount(folds, minlength=5).min() >= 1
    for c in range(4):
        assert len(set(folds[labels == c])) == 3


@pytest.mark.parametrize("k,n", [(1, 10), (0, 10), (5, 4)])
def test_bad_fold_counts_raise(k, n):
    with pytest.raises(ValueError):
        cross_fit_folds(None, n, k, seed=0)
    with pytest.raises(ValueError):
        cross_fit_folds(np.zeros(n, dtype=int), n, k, seed=0)


def test_tied_loo_errors_pick_the_first_alpha_like_ridgecv():
    """Constant features: every α predicts the mean, so the LOO errors tie."""
    x = np.ones((12, 3))
    z = np.random.default_rng(0).standard_normal((12, 2))
    grid = np.array([0.1, 1.0, 10.0])
    sol = fit_ridge(x, z, alphas=grid)
    assert len(set(sol.loo_mse.values())) == 1
    assert sol.alpha == 0.1 == RidgeCV(alphas=grid).fit(x, z).alpha_
    np.testing.assert_allclose(sol.coef, 0.0, atol=1e-12)
    np.testing.assert_allclose(sol.intercept, z.mean(axis=0))


# --------------------------------------------------------------------------- the N×N (dual) leave-one-out path


EPS = np.finfo(np.float64).eps


def _ridge_condition(x: np.ndarray, alpha: float) -> float:
    """κ of the ridge system at α: (λ_max + α) / (λ_min + α) over the centred Gram's
    eigenvalues. The m×m and N×N Grams share their nonzero spectrum, and both have a zero
    eigenvalue when N ≤ m (rank N − 1 after centring), so κ = (λ_max + α) / α for either."""
    xc = x - x.mean(axis=0)
    lam = np.clip(np.linalg.eigvalsh(xc.T @ xc if x.shape[0] > x.shape[1] else xc @ xc.T), 0.0, None)
    return float((lam[-1] + alpha) / (lam[0] + alpha))


def _two_paths_rtol(x: np.ndarray, alpha: float) -> float:
    """Relative gap allowed between two backward-stable solutions of one ridge problem.

    Forming a Gram from N×m features and factorising it (Cholesky or eigh) has a backward
    error of O((N + m)·eps) relative to the Gram; a forward error is that times κ, for each
    path, so two algebraically equal solutions differ by up to ~ (N + m)·κ·eps. The factor
    10 covers the bounds' constants and the max-norm; measured: at most 15·κ·eps over 6000
    random problems of this file's shapes on OpenBLAS's SkylakeX, Haswell and Prescott kernels
    (at the smallest α of the default grid κ reaches 1e7, so this is ~1e-6 there and ~1e-13
    where the problem is well conditioned: far below what any real difference would give).
    """
    return 10 * sum(x.shape) * _ridge_condition(x, alpha) * EPS


@SETTINGS
@given(
    seed=seeds,
    shape=st.sampled_from([(4, 9), (10, 30), (17, 18), (25, 60), (3, 5)]),  # N < m: the dual path
    k=st.integers(1, 4),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_dual_loo_equals_primal_loo(seed, shape, k, scale):
    """For N < m, the N×N path gives the m×m path's LOO errors, α and map, to the rounding
    error of two different solutions of the same system (see :func:`_two_paths_rtol`)."""
    from sing_audit import ridge

    n, m = shape
    x, z = _problem(seed, n, m, k)
    x = x * scale
    dual = fit_ridge(x, z)
    original = ridge._use_dual
    ridge._use_dual = lambda n_samples, n_features: False
    try:
        primal = fit_ridge(x, z)
    finally:
        ridge._use_dual = original
    # the default grid scales with the Gram's trace, a sum of ≤ m eigenvalues from either
    # spectrum, each off by O(m·eps·λ_max): O(m²·eps) ≈ 1e-12 relative at most for m ≤ 60
    grid_d, grid_p = sorted(dual.loo_mse), sorted(primal.loo_mse)
    np.testing.assert_allclose(grid_d, grid_p, rtol=1e-10)
    # LOO residuals divide by 1 − hat ≥ (1 − 1/N)·α/(λ_max + α) = O(1/κ), which both paths form
    # to O((N + m)·eps) absolutely: the LOO error inherits the solution's κ-relative error
    loo_rtol = {a: _two_paths_rtol(x, a) for a in grid_p}
    for a_d, a_p in zip(grid_d, grid_p):
        assert dual.loo_mse[a_d] == pytest.approx(primal.loo_mse[a_p], rel=loo_rtol[a_p]), a_p
    if grid_d.index(dual.alpha) != grid_p.index(primal.alpha):  # legitimate only on a near-tie
        tie = max(loo_rtol[primal.alpha], loo_rtol[grid_p[grid_d.index(dual.alpha)]])
        assert dual.loo_mse[dual.alpha] == pytest.approx(primal.loo_mse[primal.alpha], rel=tie)
        return
    rtol = loo_rtol[primal.alpha]
    cscale = np.abs(primal.coef).max()
    np.testing.assert_allclose(dual.coef, primal.coef, rtol=0, atol=rtol * cscale)
    # intercept = z̄ − A x̄: the map's error reaches it through x̄ (plus its own rounding)
    icpt_atol = rtol * cscale * np.abs(x.mean(axis=0)).sum() + 10 * EPS * np.abs(primal.intercept).max()
    np.testing.assert_allclose(dual.intercept, primal.intercept, rtol=0, atol=icpt_atol)


@SETTINGS
@given(seed=seeds, shape=st.sampled_from([(6, 11), (12, 40), (30, 31)]))
def test_dual_loo_matches_sklearn_ridgecv(seed, shape):
    n, m = shape
    x, z = _problem(seed, n, m, 3, noise=1.0)
    grid = np.logspace(-3, 3, 7)
    sol = fit_ridge(x, z, alphas=grid)
    ref = RidgeCV(alphas=grid, store_cv_results=True).fit(x, z)
    ref_loo = ref.cv_results_.mean(axis=(0, 1))
    np.testing.assert_allclose([sol.loo_mse[float(a)] for a in grid], ref_loo, rtol=1e-8)
    if sol.alpha == ref.alpha_:
        np.testing.assert_allclose(sol.coef, ref.coef_, rtol=0, atol=1e-8 * max(1.0, np.abs(ref.coef_).max()))


def test_ridge_reads_float32_memory_maps_in_chunks(tmp_path, monkeypatch):
    """Features may be a memory-mapped float32 array; chunked reads give the in-memory fit."""
    from sing_audit import ridge

    x, z = _problem(7, 300, 20, 3)
    path = tmp_path / "f.npy"
    np.save(path, x.astype(np.float32))
    mapped = np.load(path, mmap_mode="r")
    monkeypatch.setattr(ridge, "FIT_CHUNK_ROWS", 64)
    for kw in ({"alpha": 2.0}, {}):
        a = fit_ridge(mapped, z, **kw)
        b = fit_ridge(x.astype(np.float32).astype(np.float64), z, **kw)
        np.testing.assert_allclose(a.coef, b.coef, rtol=0, atol=1e-10 * max(1.0, np.abs(b.coef).max()))
        assert a.alpha == b.alpha


@SETTINGS
@given(
    seed=seeds,
    n=st.integers(6, 200),
    n_classes=st.integers(1, 12),
    k=st.integers(2, 6),
    data=st.data(),
)
def test_folds_equal_sklearn_splitters(seed, n, n_classes, k, data):
    """cross_fit_folds is StratifiedKFold / KFold(shuffle=True, random_state=seed), without importing them."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if n < k:
        return
    labels = np.asarray(data.draw(st.lists(st.integers(0, n_classes - 1), min_size=n, max_size=n)))
    labels = np.where(np.arange(n) < n_classes, np.arange(n) % n_classes, labels)  # class 0 … present
    ref_unlabelled = np.empty(n, dtype=np.int64)
    for i, (_, test) in enumerate(KFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros((n, 1)))):
        ref_unlabelled[test] = i
    np.testing.assert_array_equal(cross_fit_folds(None, n, k, seed), ref_unlabelled)
    if np.bincount(labels).max() < k:
        return  # the round-robin branch (StratifiedKFold refuses such data)
    ref = np.empty(n, dtype=np.int64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros((n, 1)), labels))
    for i, (_, test) in enumerate(splits):
        ref[test] = i
    np.testing.assert_array_equal(cross_fit_folds(labels, n, k, seed), ref)
    # labels of another type (strings), same grouping: same folds
    np.testing.assert_array_equal(cross_fit_folds(np.array([f"c{v:02d}" for v in labels]), n, k, seed), ref)


@SETTINGS
@given(seed=seeds, shape=st.sampled_from([(4, 9), (10, 30), (17, 18), (25, 60)]), alpha=st.sampled_from([1e-3, 1.0, 300.0]))
def test_dual_fixed_alpha_equals_primal(seed, shape, alpha):
    from sing_audit import ridge

    n, m = shape
    x, z = _problem(seed, n, m, 3)
    dual = fit_ridge(x, z, alpha=alpha)
    original = ridge._use_dual
    ridge._use_dual = lambda n_samples, n_features: False
    try:
        primal = fit_ridge(x, z, alpha=alpha)
    finally:
        ridge._use_dual = original
    scale = max(1.0, np.abs(primal.coef).max())
    np.testing.assert_allclose(dual.coef, primal.coef, rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(dual.intercept, primal.intercept, rtol=0, atol=1e-8 * max(1.0, np.abs(primal.intercept).max()))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    shape=st.sampled_from([(60, 5, 3), (200, 20, 7), (90, 12, 1)]),
    k=st.integers(2, 5),
    alpha=st.floats(1e-3, 1e3),
    offset=st.sampled_from([0.0, 50.0, 1e4]),
)
def test_fold_sums_equal_one_fit_per_fold(seed, shape, k, alpha, offset):
    """Every fold from per-fold sums = fit_ridge on that fold's training rows, also for
    features far from the origin (where uncentred sums could cancel)."""
    from sing_audit.ridge import fit_ridge_folds

    rng = np.random.default_rng(seed)
    n, m, q = shape
    x = rng.normal(size=(n, m)) + offset * rng.normal(size=m)
    z = x @ rng.normal(size=(m, q)) + rng.normal(size=(n, q))
    folds = cross_fit_folds(None, n, k, seed)
    together = fit_ridge_folds(x.astype(np.float32), z, folds, alpha)
    assert len(together) == k
    for fold, sol in enumerate(together):
        one = fit_ridge(x.astype(np.float32)[folds != fold], z[folds != fold], alpha=alpha)
        scale = 1.0 + np.abs(one.coef).max()
        np.testing.assert_allclose(sol.coef, one.coef, rtol=0, atol=1e-8 * scale)
        np.testing.assert_allclose(sol.predict(x), one.predict(x), rtol=1e-8, atol=1e-8 * (1 + np.abs(z).max()))


def test_fold_sums_refuse_cross_validated_alpha():
    from sing_audit.ridge import fit_ridge_folds

    with pytest.raises(ValueError, match="alpha > 0"):
        fit_ridge_folds(np.ones((4, 2)), np.ones((4, 1)), np.array([0, 0, 1, 1]), 0.0)


def test_linear_translator_fits_folds_together_only_where_it_pays():
    from sing_audit.builtins.linear_translator import LinearTranslator

    rng = np.random.default_rng(0)
    x, z = rng.normal(size=(100, 8)), rng.normal(size=(100, 3))
    folds = cross_fit_folds(None, 100, 4, 0)
    fixed = LinearTranslator(LinearTranslator.Options(alpha=0.5))
    fitted = fixed.fit_folds(x, z, folds)
    assert len(fitted) == 4
    alone = LinearTranslator(LinearTranslator.Options(alpha=0.5)).fit(x[folds != 2], z[folds != 2])
    np.testing.assert_allclose(fitted[2].predict(x), alone.predict(x), rtol=1e-9, atol=1e-12)
    assert LinearTranslator(LinearTranslator.Options()).fit_folds(x, z, folds) is None  # α by LOO
    assert fixed.fit_folds(x[:, :8].repeat(20, axis=1), z, folds) is None  # fewer rows than features
