"""Angles, Image Score, Attribute Score and AS contrast (sing_audit.scores)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sing_audit.scores import (
    angle_matrix,
    angles,
    attribute_contrast,
    attribute_scores,
    attribute_scores_toward,
    image_scores,
    unit_rows,
)

SETTINGS = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**32 - 1)


def _rng(seed):
    return np.random.default_rng(seed)


def _ref_angle(x: np.ndarray, y: np.ndarray) -> float:
    """Textbook definition, one pair at a time, in Python floats."""
    dot = float(sum(float(a) * float(b) for a, b in zip(x, y)))
    nx = math.sqrt(sum(float(a) ** 2 for a in x))
    ny = math.sqrt(sum(float(b) ** 2 for b in y))
    return math.degrees(math.acos(max(-1.0, min(1.0, dot / (nx * ny)))))


def _perp_unit(rng, x):
    p = rng.standard_normal(x.shape)
    p -= (p @ x) / (x @ x) * x
    return p / np.linalg.norm(p)


# --------------------------------------------------------------------------- angles


@SETTINGS
@given(seed=seeds, n=st.integers(1, 7), dim=st.integers(2, 9), sx=st.floats(1e-3, 1e3), sy=st.floats(1e-3, 1e3))
def test_angles_range_symmetry_scale_invariance(seed, n, dim, sx, sy):
    rng = _rng(seed)
    x = rng.standard_normal((n, dim))
    y = rng.standard_normal((n, dim))
    a = angles(x, y)
    assert a.shape == (n,) and a.dtype == np.float64
    assert np.all(a >= 0) and np.all(a <= 180)
    np.testing.assert_allclose(angles(y, x), a, atol=1e-12)
    np.testing.assert_allclose(angles(sx * x, sy * y), a, atol=1e-9)
    # negating one side maps θ to 180 − θ
    np.testing.assert_allclose(angles(x, -y), 180.0 - a, atol=1e-9)
    for i in range(n):
        assert a[i] == pytest.approx(_ref_angle(x[i], y[i]), abs=1e-7)


@SETTINGS
@given(seed=seeds, dim=st.integers(2, 9), scale=st.floats(1e-3, 1e3))
def test_angles_parallel_orthogonal_opposite(seed, dim, scale):
    rng = _rng(seed)
    x = rng.standard_normal((1, dim))
    perp = _perp_unit(rng, x[0])[None, :]
    assert angles(x, scale * x)[0] == pytest.approx(0.0, abs=1e-9)
    assert angles(x, x)[0] == pytest.approx(0.0, abs=1e-9)
    assert angles(x, perp)[0] == pytest.approx(90.0, abs=1e-9)
    assert angles(x, -scale * x)[0] == pytest.approx(180.0, abs=1e-9)
    m = angle_matrix(x, np.vstack([scale * x, perp, -x]))
    np.testing.assert_allclose(m, [[0.0, 90.0, 180.0]], atol=1e-9)


def test_angle_closed_forms():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    y = np.array([[1.0, 1.0], [-1.0, 1.0], [0.0, 3.0], [1.0, math.sqrt(3.0)]])
    np.testing.assert_allclose(angles(x, y), [45.0, 135.0, 45.0, 60.0], atol=1e-12)


@pytest.mark.parametrize("delta", [1e-9, 1e-7, 1e-5])
def test_tiny_angles_are_resolved_in_float64(delta):
    """angle(x, x + δ·perp) ≈ degrees(δ); float32 arccos would give 0 or ~0.02°."""
    rng = _rng(7)
    x = rng.standard_normal(16)
    x /= np.linalg.norm(x)
    perp = _perp_unit(rng, x)
    y = x + delta * perp
    expected = math.degrees(math.atan(delta))
    got = angles(x[None], y[None])[0]
    assert got == pytest.approx(expected, rel=1e-4)
    # the same through the N×K path used by the attribute score
    got_m = angle_matrix(x[None], np.vstack([y, perp]))[0]
    assert got_m[0] == pytest.approx(expected, rel=1e-4)
    assert got_m[1] == pytest.approx(90.0, abs=1e-9)
    # and near 180°
    got_opp = angles(x[None], (-x + delta * perp)[None])[0]
    assert 180.0 - got_opp == pytest.approx(expected, rel=1e-4)
    got_opp_m = angle_matrix(x[None], (-x + delta * perp)[None])[0, 0]
    assert 180.0 - got_opp_m == pytest.approx(expected, rel=1e-4)


def test_image_score_of_tiny_change_is_not_zero():
    """IS between T(f) and a slightly moved T(f̃) must not collapse to 0 (float32 would)."""
    x = np.array([[3.0, 4.0, 0.0]])
    y = x + np.array([[0.0, 0.0, 5e-7]])  # angle = atan(1e-7)
    assert image_scores(x, y)[0] == pytest.approx(math.degrees(1e-7), rel=1e-6)


def test_unit_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    np.testing.assert_allclose(unit_rows(x), [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    assert unit_rows(x.astype(np.float32)).dtype == np.float64


# --------------------------------------------------------------------------- IS / AS


@SETTINGS
@given(seed=seeds, n=st.integers(1, 8), k=st.integers(1, 6), dim=st.integers(2, 8))
def test_attribute_scores_equal_direct_loop(seed, n, k, dim):
    rng = _rng(seed)
    t = rng.standard_normal((n, dim))
    tr = t + 0.5 * rng.standard_normal((n, dim))
    text = rng.standard_normal((k, dim))
    got = attribute_scores(t, tr, text)
    assert got.shape == (n, k)
    expected = np.array([[_ref_angle(t[i], text[j]) - _ref_angle(tr[i], text[j]) for j in range(k)] for i in range(n)])
    np.testing.assert_allclose(got, expected, atol=1e-7)
    # IS ≥ 0 and equals the angle between T(f) and T(f̃)
    is_ = image_scores(t, tr)
    assert np.all(is_ >= 0) and np.all(is_ <= 180)
    np.testing.assert_allclose(is_, [_ref_angle(t[i], tr[i]) for i in range(n)], atol=1e-7)
    # |AS| ≤ IS (triangle inequality for angles on the sphere)
    assert np.all(np.abs(got) <= is_[:, None] + 1e-9)


@SETTINGS
@given(seed=seeds, n=st.integers(1, 8), k=st.integers(1, 6), dim=st.integers(2, 8))
def test_attribute_scores_toward_picks_the_column(seed, n, k, dim):
    rng = _rng(seed)
    t = rng.standard_normal((n, dim))
    tr = t + rng.standard_normal((n, dim))
    text = rng.standard_normal((k, dim))
    idx = rng.integers(0, k, size=n)
    full = attribute_scores(t, tr, text)
    toward = attribute_scores_toward(t, tr, text, idx)
    assert toward.shape == (n,)
    np.testing.assert_allclose(toward, full[np.arange(n), idx], atol=1e-9)


def test_attribute_score_sign():
    """Positive AS: the null-removed feature is closer to the prompt."""
    text = np.array([[1.0, 0.0]])
    t = np.array([[0.0, 1.0]])  # 90° from the prompt
    tr = np.array([[1.0, 1.0]])  # 45° from the prompt
    assert attribute_scores(t, tr, text)[0, 0] == pytest.approx(45.0)
    assert attribute_scores(tr, t, text)[0, 0] == pytest.approx(-45.0)
    assert attribute_scores_toward(t, tr, text, np.array([0]))[0] == pytest.approx(45.0)
    assert image_scores(t, tr)[0] == pytest.approx(45.0)


def test_identical_translations_have_zero_scores():
    rng = _rng(1)
    t = rng.standard_normal((5, 4))
    text = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(attribute_scores(t, t.copy(), text), np.zeros((5, 3)))
    np.testing.assert_allclose(image_scores(t, 2.0 * t), np.zeros(5), atol=1e-9)


# --------------------------------------------------------------------------- contrast


@SETTINGS
@given(seed=seeds, n=st.integers(1, 8), k=st.integers(2, 7))
def test_attribute_contrast_equals_own_minus_median_of_others(seed, n, k):
    rng = _rng(seed)
    a = rng.standard_normal((n, k)) * 5
    idx = rng.integers(0, k, size=n)
    got = attribute_contrast(a, idx)
    expected = []
    for i in range(n):
        others = [a[i, j] for j in range(k) if j != idx[i]]
        expected.append(a[i, idx[i]] - float(np.median(others)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # the input is not modified
    assert np.isfinite(a).all()


def test_attribute_contrast_closed_form():
    a = np.array([[10.0, 1.0, 2.0, 3.0], [0.0, 0.0, 8.0, -4.0]])
    np.testing.assert_allclose(attribute_contrast(a, np.array([0, 2])), [8.0, 8.0])


def test_attribute_contrast_common_drift_cancels():
    """A shift that moves every prompt alike does not change the contrast."""
    rng = _rng(2)
    a = rng.standard_normal((6, 5))
    idx = rng.integers(0, 5, size=6)
    shift = rng.standard_normal((6, 1)) * 30
    np.testing.assert_allclose(attribute_contrast(a + shift, idx), attribute_contrast(a, idx), atol=1e-12)


def test_attribute_contrast_single_prompt_is_nan():
    got = attribute_contrast(np.array([[1.0], [2.0]]), np.array([0, 0]))
    assert got.shape == (2,) and np.isnan(got).all()


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(2, 40),
    n=st.integers(1, 30),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
)
def test_attribute_contrast_equals_nanmedian_of_the_other_prompts(k, n, seed, ties):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, k))
    if ties:
        a = np.round(a, 1)  # repeated values: the median's middle pair may tie
    idx = rng.integers(0, k, n)
    others = a.copy()
    others[np.arange(n), idx] = np.nan
    expected = a[np.arange(n), idx] - np.nanmedian(others, axis=1)
    np.testing.assert_array_equal(attribute_contrast(a, idx), expected)
