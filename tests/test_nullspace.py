"""Properties and closed-form checks of sing_audit.nullspace (SVD split, null removal)."""

from __future__ import annotations

import dataclasses
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sing_audit.nullspace import (
    HeadSubspaces,
    logit_drift,
    null_component,
    null_energy,
    remove_null,
    split_head,
)

SETTINGS = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
F32_EPS = float(np.finfo(np.float32).eps)

seeds = st.integers(0, 2**32 - 1)
dims = st.integers(1, 12)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return q[:, :k]


def _with_singular_values(rng: np.random.Generator, c: int, m: int, s: np.ndarray) -> np.ndarray:
    """A c×m matrix with the given (min(c, m)) singular values."""
    k = min(c, m)
    assert s.shape == (k,)
    return _orthonormal(rng, c, k) @ np.diag(s) @ _orthonormal(rng, m, k).T


def _rel_close(a: np.ndarray, b: np.ndarray, scale: float, tol: float) -> bool:
    return float(np.max(np.abs(a - b), initial=0.0)) <= tol * max(scale, 1e-300)


# --------------------------------------------------------------------------- rank rule


@SETTINGS
@given(seed=seeds, c=dims, extra=st.integers(1, 10), n=st.integers(1, 8))
def test_rank_rule_wide_head_keeps_logits(seed, c, extra, n):
    """c < m: a real null space exists and null removal leaves W f unchanged."""
    rng = _rng(seed)
    m = c + extra
    w = rng.standard_normal((c, m))
    f = rng.standard_normal((n, m)) * rng.uniform(0.1, 10)
    sub = split_head(w)
    assert sub.rule == "rank" and sub.exact
    assert sub.rank == c
    assert sub.null_dim == m - c
    assert sub.principal.shape == (m, c) and sub.null.shape == (m, m - c)
    before, after = f @ w.T, remove_null(f, sub) @ w.T
    scale = np.linalg.norm(w, 2) * np.max(np.linalg.norm(f, axis=1))
    assert _rel_close(before, after, scale, 1e-6)
    # the null basis really is annihilated by W
    assert np.linalg.norm(w @ sub.null) <= 1e-10 * np.linalg.norm(w)


@SETTINGS
@given(seed=seeds, m=dims, extra=st.integers(0, 8), n=st.integers(1, 8))
def test_rank_rule_tall_head_has_no_null_space(seed, m, extra, n):
    """c ≥ m (e.g. ViT-B: 768 features, 1000 classes): null_dim 0, removal is the identity."""
    rng = _rng(seed)
    c = m + extra
    w = rng.standard_normal((c, m))
    f = rng.standard_normal((n, m))
    sub = split_head(w)
    assert sub.rank == m
    assert sub.null_dim == 0
    assert sub.null.shape == (m, 0)
    np.testing.assert_allclose(remove_null(f, sub), f, rtol=0, atol=1e-12 * np.abs(f).max())
    np.testing.assert_array_equal(null_energy(f, sub), np.zeros(n))
    np.testing.assert_allclose(sub.projector_null(), np.zeros((m, m)), atol=0)


@SETTINGS
@given(seed=seeds, c=st.integers(2, 12), m=st.integers(2, 12), data=st.data())
def test_rank_rule_detects_rank_of_product_of_thin_matrices(seed, c, m, data):
    k = data.draw(st.integers(1, min(c, m) - 1) if min(c, m) > 1 else st.just(1))
    assume(k < min(c, m))
    rng = _rng(seed)
    w = rng.standard_normal((c, k)) @ rng.standard_normal((k, m))
    sub = split_head(w)
    assert sub.rank == k
    assert sub.null_dim == m - k
    f = rng.standard_normal((5, m))
    scale = np.linalg.norm(w, 2) * np.max(np.linalg.norm(f, axis=1))
    assert _rel_close(f @ w.T, remove_null(f, sub) @ w.T, scale, 1e-6)
    # the same answer as numpy's matrix_rank with float32 precision
    assert sub.rank == np.linalg.matrix_rank(w, tol=max(c, m) * F32_EPS * np.linalg.norm(w, 2))


@SETTINGS
@given(seed=seeds, c=dims, m=dims, rule=st.sampled_from(["rank", "energy", "fixed"]), data=st.data())
def test_projectors_are_complementary_orthogonal_projectors(seed, c, m, rule, data):
    rng = _rng(seed)
    w = rng.standard_normal((c, m))
    kwargs = {}
    if rule == "energy":
        kwargs["keep"] = data.draw(st.floats(0.05, 1.0))
    elif rule == "fixed":
        kwargs["rank"] = data.draw(st.integers(0, min(c, m)))
    sub = split_head(w, rule, **kwargs)
    pp, pn = sub.projector_principal(), sub.projector_null()
    eye = np.eye(m)
    for p in (pp, pn):
        np.testing.assert_allclose(p @ p, p, atol=1e-10)
        np.testing.assert_allclose(p, p.T, atol=1e-10)
    np.testing.assert_allclose(pp @ pn, np.zeros((m, m)), atol=1e-10)
    np.testing.assert_allclose(pp + pn, eye, atol=1e-10)
    # orthonormal columns, and the two bases are orthogonal to each other
    np.testing.assert_allclose(sub.principal.T @ sub.principal, np.eye(sub.rank), atol=1e-10)
    np.testing.assert_allclose(sub.null.T @ sub.null, np.eye(sub.null_dim), atol=1e-10)
    np.testing.assert_allclose(sub.principal.T @ sub.null, np.zeros((sub.rank, sub.null_dim)), atol=1e-10)
    assert sub.rank + sub.null_dim == m == sub.num_features
    # singular values: all min(c, m), descending, float64
    assert sub.singular_values.shape == (min(c, m),)
    assert sub.singular_values.dtype == np.float64
    assert np.all(np.diff(sub.singular_values) <= 0)


def test_split_head_runs_in_float64_for_float32_weights():
    rng = _rng(0)
    w = rng.standard_normal((4, 9)).astype(np.float32)
    sub = split_head(w)
    assert sub.principal.dtype == np.float64 and sub.null.dtype == np.float64
    # orthonormal to float64 precision, not float32's
    np.testing.assert_allclose(sub.null.T @ sub.null, np.eye(5), atol=1e-13)
    assert np.linalg.norm(w.astype(np.float64) @ sub.null) < 1e-12


# --------------------------------------------------------------------------- tolerance


@pytest.mark.parametrize("c,m", [(3, 8), (8, 5), (6, 6)])
def test_float32_default_tolerance_treats_1e_9_singular_value_as_zero(c, m):
    """numpy's matrix_rank convention with float32 eps: tol = max(c, m)·eps32·σ_max."""
    rng = _rng(1)
    k = min(c, m)
    s = np.linspace(3.0, 1.0, k)
    s[-1] = 3.0 * 1e-9  # 1e-9 · σ_max
    w = _with_singular_values(rng, c, m, s)
    sub = split_head(w)
    assert sub.rank == k - 1
    assert sub.null_dim == m - k + 1
    assert sub.tolerance == pytest.approx(max(c, m) * F32_EPS * 3.0, rel=1e-9)
    # numpy's own convention on the float32-stored weights agrees
    assert np.linalg.matrix_rank(w.astype(np.float32)) == k - 1
    # a stricter explicit rtol (float64-stored weights) keeps that direction
    strict = split_head(w, rtol=1e-12)
    assert strict.rank == k
    assert strict.tolerance == pytest.approx(1e-12 * 3.0, rel=1e-9)
    # and a float64 weight_eps gives numpy's float64 convention
    assert split_head(w, weight_eps=float(np.finfo(np.float64).eps)).rank == k


def test_singular_value_just_above_tolerance_is_kept():
    rng = _rng(2)
    c, m = 4, 10
    tol_rel = max(c, m) * F32_EPS
    s = np.array([1.0, 0.5, 0.2, 10 * tol_rel])
    sub = split_head(_with_singular_values(rng, c, m, s))
    assert sub.rank == 4
    s[-1] = 0.1 * tol_rel
    assert split_head(_with_singular_values(rng, c, m, s)).rank == 3


def test_zero_head_has_full_null_space():
    sub = split_head(np.zeros((3, 5)))
    assert sub.rank == 0 and sub.null_dim == 5
    f = np.arange(10.0).reshape(2, 5)
    np.testing.assert_allclose(remove_null(f, sub), np.zeros_like(f), atol=1e-12)
    np.testing.assert_allclose(null_energy(f, sub), [1.0, 1.0])


# --------------------------------------------------------------------------- energy / fixed rules


def _direct_energy_rank(s: np.ndarray, keep: float) -> int:
    energy = np.cumsum(s**2)
    for r in range(1, s.size + 1):
        if energy[r - 1] >= keep * energy[-1]:
            return r
    return s.size


@SETTINGS
@given(seed=seeds, c=dims, m=dims, keep=st.floats(0.01, 1.0))
def test_energy_rule_keeps_smallest_rank_reaching_the_fraction(seed, c, m, keep):
    rng = _rng(seed)
    w = rng.standard_normal((c, m)) * rng.uniform(0.1, 10, size=(1, m))
    sub = split_head(w, "energy", keep=keep)
    s = np.linalg.svd(w, compute_uv=False)
    energy = np.cumsum(s**2)
    # skip draws where keep lands on a cumulative sum (within rounding)
    assume(np.all(np.abs(energy / energy[-1] - keep) > 1e-9) or keep == 1.0)
    expected = _direct_energy_rank(s, keep)
    assert sub.rank == expected
    assert sub.rule == "energy" and sub.tolerance is None and not sub.exact
    assert sub.null_dim == m - expected
    # the kept share really reaches keep, one less would not
    assert energy[sub.rank - 1] >= keep * energy[-1] * (1 - 1e-12)
    if sub.rank > 1:
        assert energy[sub.rank - 2] < keep * energy[-1]


def test_energy_rule_closed_form():
    # σ² = 16, 4, 1  ->  shares 16/21 = .762, 20/21 = .952, 1
    w = np.zeros((3, 5))
    w[0, 0], w[1, 1], w[2, 2] = 4.0, 2.0, 1.0
    assert split_head(w, "energy", keep=0.5).rank == 1
    assert split_head(w, "energy", keep=16 / 21).rank == 1
    assert split_head(w, "energy", keep=0.8).rank == 2
    assert split_head(w, "energy", keep=0.99).rank == 3
    assert split_head(w, "energy", keep=1.0).rank == 3
    sub = split_head(w, "energy", keep=0.8)
    # the null space is spanned by e3, e4, e5 (σ = 1 dropped, plus the exact null)
    np.testing.assert_allclose(np.abs(sub.projector_null()), np.diag([0, 0, 1, 1, 1.0]), atol=1e-12)


@SETTINGS
@given(seed=seeds, c=dims, m=dims, data=st.data())
def test_fixed_rule_uses_the_given_rank(seed, c, m, data):
    r = data.draw(st.integers(0, min(c, m)))
    w = _rng(seed).standard_normal((c, m))
    sub = split_head(w, "fixed", rank=r)
    assert sub.rank == r and sub.null_dim == m - r
    assert sub.rule == "fixed" and sub.tolerance is None
    # V_p spans the top-r right singular vectors
    _, _, vt = np.linalg.svd(w)
    np.testing.assert_allclose(sub.projector_principal(), vt[:r].T @ vt[:r], atol=1e-9)


@pytest.mark.parametrize(
    "weight,kwargs",
    [
        (np.ones((3, 4)), {"rule": "energy"}),
        (np.ones((3, 4)), {"rule": "energy", "keep": 0.0}),
        (np.ones((3, 4)), {"rule": "energy", "keep": 1.5}),
        (np.ones((3, 4)), {"rule": "energy", "keep": -0.2}),
        (np.ones((3, 4)), {"rule": "fixed"}),
        (np.ones((3, 4)), {"rule": "fixed", "rank": 4}),
        (np.ones((3, 4)), {"rule": "fixed", "rank": -1}),
        (np.ones((3, 4)), {"rule": "svd"}),
        (np.ones(4), {}),
        (np.ones((2, 3, 4)), {}),
        (np.ones((0, 4)), {}),
        (np.ones((3, 0)), {}),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), {}),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), {}),
    ],
)
def test_bad_arguments_raise_value_error(weight, kwargs):
    kwargs = dict(kwargs)
    rule = kwargs.pop("rule", "rank")
    with pytest.raises(ValueError):
        split_head(weight, rule, **kwargs)


def test_null_component_rejects_wrong_feature_dimension():
    sub = split_head(np.ones((2, 5)))
    with pytest.raises(ValueError):
        null_component(np.ones((3, 4)), sub)


# --------------------------------------------------------------------------- null component / energy


@SETTINGS
@given(seed=seeds, c=dims, m=dims, data=st.data())
def test_null_component_matches_explicit_projector_through_either_branch(seed, c, m, data):
    """Both branches (through V_n when null_dim ≤ rank, through V_p otherwise) agree."""
    r = data.draw(st.integers(0, min(c, m)))
    rng = _rng(seed)
    w = rng.standard_normal((c, m))
    f = rng.standard_normal((6, m)) * 3.0
    sub = split_head(w, "fixed", rank=r)
    explicit = f @ (sub.null @ sub.null.T)  # Π_n symmetric
    got = null_component(f, sub)
    np.testing.assert_allclose(got, explicit, atol=1e-10 * np.abs(f).max())
    # through the other branch, by hand
    other = f - (f @ sub.principal) @ sub.principal.T
    np.testing.assert_allclose(got, other, atol=1e-10 * np.abs(f).max())
    np.testing.assert_allclose(remove_null(f, sub), f @ sub.projector_principal(), atol=1e-10 * np.abs(f).max())


@pytest.mark.parametrize("r", [1, 6])  # null_dim 6 > rank 1 and null_dim 1 ≤ rank 6
def test_null_component_both_branches_explicitly(r):
    rng = _rng(3)
    w = rng.standard_normal((7, 7))
    sub = split_head(w, "fixed", rank=r)
    f = rng.standard_normal((4, 7))
    np.testing.assert_allclose(null_component(f, sub), f @ sub.projector_null(), atol=1e-12)


@SETTINGS
@given(seed=seeds, c=dims, m=dims, data=st.data())
def test_null_energy_in_unit_interval_and_equals_ratio_of_norms(seed, c, m, data):
    r = data.draw(st.integers(0, min(c, m)))
    rng = _rng(seed)
    sub = split_head(rng.standard_normal((c, m)), "fixed", rank=r)
    f = rng.standard_normal((5, m)) * rng.uniform(1e-3, 1e3)
    e = null_energy(f, sub)
    assert e.shape == (5,)
    assert np.all(e >= 0) and np.all(e <= 1 + 1e-12)
    direct = np.linalg.norm(f @ sub.projector_null(), axis=1) / np.linalg.norm(f, axis=1)
    np.testing.assert_allclose(e, direct, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("r", [1, 3, 6, 8])
def test_null_energy_both_branches_explicitly(r):
    """Through ‖V_nᵀ f‖ (null dimension ≤ 2·rank) and through f − Π_p f (a small rank):
    the same ratio of norms as the explicit projector, also for features almost in the
    principal subspace (where f − Π_p f would cancel)."""
    rng = _rng(r)
    sub = split_head(rng.standard_normal((r, 8)), "fixed", rank=r) if r < 8 else split_head(rng.standard_normal((8, 8)), "fixed", rank=6)
    f = rng.standard_normal((6, 8))
    f[0] = sub.principal @ rng.standard_normal(sub.rank) + 1e-9 * (sub.null @ rng.standard_normal(sub.null_dim) if sub.null_dim else 0)
    direct = np.linalg.norm(f @ sub.projector_null(), axis=1) / np.linalg.norm(f, axis=1)
    np.testing.assert_allclose(null_energy(f, sub), direct, rtol=1e-6, atol=1e-15)


def test_null_energy_closed_form_and_zero_feature():
    w = np.array([[1.0, 0.0, 0.0]])  # null space = span(e2, e3)
    sub = split_head(w)
    f = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.0], [5.0, 0.0, 0.0]])
    np.testing.assert_allclose(null_energy(f, sub), [0.8, 0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(remove_null(f, sub), [[3, 0, 0], [0, 0, 0], [0, 0, 0], [5, 0, 0]], atol=1e-12)


# --------------------------------------------------------------------------- logit drift


@SETTINGS
@given(seed=seeds, c=st.integers(2, 10), extra=st.integers(1, 10))
def test_logit_drift_is_zero_under_exact_rule(seed, c, extra):
    rng = _rng(seed)
    m = c + extra
    w = rng.standard_normal((c, m))
    b = rng.standard_normal(c)
    f = rng.standard_normal((20, m))
    sub = split_head(w)
    drift = logit_drift(w, b, f, remove_null(f, sub))
    assert drift.relative.shape == (20,) and drift.agreement.shape == (20,)
    assert np.all(drift.relative < 1e-10)
    assert drift.agreement.dtype == bool and drift.agreement.all()


def test_logit_drift_nonzero_under_truncated_fixed_rule():
    rng = _rng(4)
    c, m = 10, 16
    w = rng.standard_normal((c, m))
    b = np.zeros(c)
    f = rng.standard_normal((200, m))
    sub = split_head(w, "fixed", rank=3)  # true rank 10
    drift = logit_drift(w, b, f, remove_null(f, sub))
    assert np.all(drift.relative > 1e-3)
    assert not drift.agreement.all()
    # closed form of the relative change, computed directly
    g = remove_null(f, sub)
    direct = np.linalg.norm((f - g) @ w.T, axis=1) / np.linalg.norm(f @ w.T + b, axis=1)
    np.testing.assert_allclose(drift.relative, direct, rtol=1e-12)
    np.testing.assert_array_equal(drift.agreement, np.argmax(f @ w.T, 1) == np.argmax(g @ w.T, 1))


def test_logit_drift_zero_logits_give_zero_relative():
    w = np.zeros((2, 3))
    f = np.ones((1, 3))
    drift = logit_drift(w, np.zeros(2), f, f * 0)
    assert drift.relative.tolist() == [0.0]


def test_head_subspaces_is_frozen():
    sub = split_head(np.ones((2, 3)))
    assert isinstance(sub, HeadSubspaces)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sub.rank = 5  # type: ignore[misc]
