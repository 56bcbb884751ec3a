"""Scores toward one text embedding given as a 1-D vector: the same numbers as the 1×n
matrix, with the prompt axis dropped (before, angle_matrix raised "not enough values to
unpack")."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sing_audit.scores import angle_matrix, angles, attribute_scores, attribute_scores_toward

SETTINGS = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**32 - 1)


def _data(seed, n, d, near):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    t = rng.standard_normal(d)
    if near:  # some rows (anti)parallel to t: the stable-angle branch runs too
        x[0] = 3.0 * t + 1e-9 * rng.standard_normal(d)
        x[-1] = -t
    return x, x + 0.3 * rng.standard_normal((n, d)), t


@SETTINGS
@given(seed=seeds, n=st.integers(1, 12), d=st.integers(1, 9), near=st.booleans())
def test_one_dimensional_text_equals_the_one_row_matrix(seed, n, d, near):
    x, y, t = _data(seed, n, d, near)
    m = angle_matrix(x, t)
    assert m.shape == (n,)
    # the same computation (1-D is reshaped, not recomputed another way): equal bits
    np.testing.assert_array_equal(m, angle_matrix(x, t[None, :])[:, 0])
    np.testing.assert_array_equal(angle_matrix(x[0], t), angle_matrix(x[:1], t[None, :])[0, 0])
    assert angle_matrix(x[0], t).shape == ()
    assert angle_matrix(x[0], np.stack([t, -t])).shape == (2,)
    a = attribute_scores(x, y, t)
    assert a.shape == (n,)
    np.testing.assert_array_equal(a, attribute_scores(x, y, t[None, :])[:, 0])
    toward = attribute_scores_toward(x, y, t)
    assert toward.shape == (n,)
    np.testing.assert_array_equal(toward, attribute_scores_toward(x, y, t[None, :], np.zeros(n, dtype=int)))
    # row-wise angles and the matrix agree to rounding (two formulas: arccos vs atan2 off the
    # near-parallel band, where arccos loses ~1e-8° per unit of cond; 1e-6° is generous)
    np.testing.assert_allclose(angles(x, t), m, atol=1e-6)
    np.testing.assert_allclose(toward, a, atol=2e-6)


def test_one_dimensional_text_with_a_nonzero_index_is_refused():
    x = np.eye(3)
    with pytest.raises(ValueError, match="out of range"):
        attribute_scores_toward(x, x, np.ones(3), np.array([0, 1, 0]))


def test_matrix_text_needs_an_index():
    with pytest.raises(ValueError, match="index"):
        attribute_scores_toward(np.eye(3), np.eye(3), np.eye(3))


def test_mismatched_dimensions_are_refused():
    with pytest.raises(ValueError, match="dimensions"):
        angle_matrix(np.ones((2, 3)), np.ones(4))
