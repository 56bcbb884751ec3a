"""The rank rule's absolute cut (``atol``, the SING authors' ``σ > 1e-5``) against the
default relative cut: where they agree, where they differ, and which of them is exact."""

from __future__ import annotations

import numpy as np
import pytest

from sing_audit.nullspace import logit_drift, remove_null, split_head
from sing_audit.scores import image_scores

F32 = float(np.finfo(np.float32).eps)


def _head(rng, c, m, singular_values):
    """c×m head ``U diag(s) Vᵀ`` with the given singular values (random orthonormal U, V)."""
    u, _ = np.linalg.qr(rng.standard_normal((c, c)))
    v, _ = np.linalg.qr(rng.standard_normal((m, m)))
    s = np.zeros((c, m))
    s[np.arange(len(singular_values)), np.arange(len(singular_values))] = singular_values
    return u @ s @ v.T


def test_real_shaped_head_both_cuts_agree():
    # a 1000-class head on 2048 features with trained-head scale (entries ~ N(0, 0.02²)):
    # its smallest singular value is ≈ 0.02·(√2048 − √1000) ≈ 0.27, far above both the
    # absolute 1e-5 and the relative 2048·eps32·σ_max ≈ 3e-4 cut, so both keep rank 1000
    rng = np.random.default_rng(0)
    w = (0.02 * rng.standard_normal((1000, 2048))).astype(np.float32)
    rel = split_head(w, "rank", weight_eps=F32)
    ab = split_head(w, "rank", atol=1e-5, weight_eps=F32)
    assert rel.rank == ab.rank == 1000 and rel.null_dim == ab.null_dim == 1048
    assert rel.exact and ab.exact
    assert rel.label == "rank" and ab.label == "rank (atol 1e-05)"
    # the same subspace (the SVD is the same; the split index is the same)
    np.testing.assert_array_equal(rel.null, ab.null)


def test_scaled_head_absolute_cut_drops_everything_and_is_not_exact():
    # the same head ×1e-6: every singular value (≈ 3e-8 … 6e-7) is below 1e-5, so the
    # absolute cut calls the whole feature space null; the relative cut is scale-free
    rng = np.random.default_rng(1)
    w = 1e-6 * 0.02 * rng.standard_normal((50, 128))
    f = rng.standard_normal((20, 128))
    b = np.zeros(50)
    rel = split_head(w, "rank", weight_eps=F32)
    ab = split_head(w, "rank", atol=1e-5, weight_eps=F32)
    assert rel.rank == 50 and ab.rank == 0 and ab.null_dim == 128
    assert rel.exact and not ab.exact
    # W f̃ = W f holds for the relative cut (to rounding: float64 SVD of a well-conditioned
    # head, relative error ~ 1e-15 · κ with κ = σ_max/σ_min < 10)…
    assert logit_drift(w, b, f, remove_null(f, rel)).relative.max() < 1e-12
    # …and fails entirely for the absolute one: f̃ = 0, every logit is lost
    np.testing.assert_allclose(logit_drift(w, b, f, remove_null(f, ab)).relative, 1.0, rtol=1e-12)


def test_real_small_singular_values_absolute_cut_changes_rank_is_and_logits():
    # singular values from 1e-4 down to 1e-7: all real (the noise floor is 128·eps32·1e-4 ≈
    # 1.5e-9), but the 1e-5 cut drops those below it
    rng = np.random.default_rng(2)
    s = np.logspace(-4, -7, 50)
    w = _head(rng, 50, 128, s)
    rel = split_head(w, "rank", weight_eps=F32)
    ab = split_head(w, "rank", atol=1e-5, weight_eps=F32)
    assert rel.rank == 50 and rel.exact
    assert ab.rank == int(np.count_nonzero(s > 1e-5)) == 17 and not ab.exact
    assert ab.tolerance == 1e-5
    f = rng.standard_normal((200, 128))
    b = np.zeros(50)
    drift_rel = logit_drift(w, b, f, remove_null(f, rel)).relative
    drift_ab = logit_drift(w, b, f, remove_null(f, ab)).relative
    assert drift_rel.max() < 1e-9  # κ = 1e3, so rounding is ~1e-13; wide margin
    # the dropped σ ≤ 1e-5 carry ≈ Σσ²(dropped)/Σσ² ≈ 1% of the logit energy: a real change
    assert drift_ab.mean() > 1e-2
    # the IS (T = identity here) moves by tens of degrees: removing 111 instead of 78 of
    # 128 directions of an isotropic feature gives arccos√(17/128) − arccos√(50/128) ≈ 17°
    is_rel = image_scores(f, remove_null(f, rel))
    is_ab = image_scores(f, remove_null(f, ab))
    gap = float(np.mean(is_ab - is_rel))
    expected = np.degrees(np.arccos(np.sqrt(17 / 128)) - np.arccos(np.sqrt(50 / 128)))
    assert gap == pytest.approx(expected, abs=2.5)  # sampling spread of 200 isotropic rows
    assert gap > 10


def test_absolute_cut_is_strict_and_keeps_values_above_it():
    w = np.zeros((3, 5))
    w[0, 0], w[1, 1], w[2, 2] = 1e-4, 2e-5, 5e-6
    sub = split_head(w, "rank", atol=1e-5, weight_eps=F32)
    assert sub.rank == 2 and sub.null_dim == 3
    np.testing.assert_allclose(np.abs(sub.projector_null()), np.diag([0, 0, 1, 1, 1.0]), atol=1e-12)
    # 5e-6 is real (noise floor 5·eps32·1e-4 ≈ 6e-11): the null space is approximate
    assert not sub.exact
    # a cut below every real singular value drops only exact zeros: exact again
    low = split_head(w, "rank", atol=1e-9, weight_eps=F32)
    assert low.rank == 3 and low.exact


def test_larger_rtol_that_drops_real_directions_is_not_exact():
    w = np.zeros((3, 5))
    w[0, 0], w[1, 1], w[2, 2] = 1.0, 0.5, 1e-3
    sub = split_head(w, "rank", rtol=1e-2, weight_eps=F32)
    assert sub.rank == 2 and not sub.exact and sub.label == "rank (rtol 0.01)"
    assert split_head(w, "rank", weight_eps=F32).exact


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"rule": "rank", "atol": 1e-5, "rtol": 1e-6}, "not both"),
        ({"rule": "rank", "atol": -1.0}, "atol"),
        ({"rule": "energy", "keep": 0.9, "atol": 1e-5}, "atol"),
    ],
)
def test_bad_atol_raises(kwargs, needle):
    kwargs = dict(kwargs)
    rule = kwargs.pop("rule")
    with pytest.raises(ValueError, match=needle):
        split_head(np.eye(3), rule, **kwargs)


def test_validation_probe_reports_an_approximate_absolute_cut_instead_of_failing_it():
    from sing_audit.builtins.nullspace_validation import NullspaceValidation

    from .test_concepts import _context, _orthogonal_case

    case = _orthogonal_case()
    w = 1e-7 * case["w"]  # every σ (≈ 1e-7) below the 1e-5 cut: all of feature space is "null"
    sub = split_head(w, "rank", atol=1e-5, weight_eps=F32)
    assert sub.rank == 0 and not sub.exact
    ctx = _context({**case, "w": w, "sub": sub}, target=None)
    s = NullspaceValidation().run(ctx).summary
    # null moves now change the logits as much as random ones: reported, not a failed head
    assert s["null"] > 0.1 and s["exact"] is False and s["rule"] == "rank (atol 1e-05)"
    assert s["passed"] is True
    exact = split_head(w, "rank", weight_eps=F32)
    s = NullspaceValidation().run(_context({**case, "w": w, "sub": exact}, target=None)).summary
    assert s["exact"] is True and s["null"] < 1e-9 and s["passed"] is True
