"""Policy flags, outliers and waivers; fidelity, zero-shot and ratio figures (sing_audit.analysis)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import mean_squared_error, r2_score

from sing_audit.analysis import apply_policy, class_results, fidelity_figures, ratio, zero_shot_accuracy
from sing_audit.config import PolicyConfig
from sing_audit.results import ClassResult, Interval

SETTINGS = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
TODAY = dt.date(2026, 6, 1)


def _cls(index: int, low: float | None, n: int = 20, mean: float | None = None, name: str | None = None) -> ClassResult:
    mean = mean if mean is not None else (low + 1.0 if low is not None else 1.0)
    return ClassResult(
        index=index,
        name=name or f"class{index}",
        n=n,
        as_abs_mean=mean,
        as_abs_ci=Interval(low=low, high=None if low is None else mean + (mean - low)),
    )


def _policy(**kw) -> PolicyConfig:
    return PolicyConfig.model_validate(kw)


# --------------------------------------------------------------------------- flags


@SETTINGS
@given(
    lows=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=12),
    ns=st.lists(st.integers(1, 30), min_size=12, max_size=12),
    threshold=st.floats(0, 8),
    min_images=st.integers(1, 25),
    max_flagged=st.integers(0, 4),
)
def test_flags_exactly_the_classes_whose_lower_bound_exceeds_threshold(lows, ns, threshold, min_images, max_flagged):
    classes = [_cls(i, low, n=ns[i]) for i, low in enumerate(lows)]
    policy = _policy(as_threshold=threshold, min_images=min_images, max_flagged=max_flagged)
    out = apply_policy("m", classes, policy, today=TODAY)
    expected = [c.name for c, low in zip(classes, lows) if c.n >= min_images and low > threshold]
    assert [c.name for c in classes if c.flagged] == expected
    assert out.flagged_names == expected
    assert out.n_flagged == len(expected)
    assert out.n_waived == 0
    assert out.passed == (len(expected) <= max_flagged)
    for c in classes:
        assert bool(c.flag_reasons) == c.flagged
        assert not c.waived


def test_closed_form_flags_and_reason_text():
    classes = [_cls(0, 3.9), _cls(1, 4.0), _cls(2, 4.01, mean=6.0), _cls(3, 9.0, n=9), _cls(4, None)]
    out = apply_policy("m", classes, _policy(), today=TODAY)  # threshold 4°, min 10 images
    assert [c.flagged for c in classes] == [False, False, True, False, False]
    assert out.flagged_names == ["class2"] and not out.passed
    reason = classes[2].flag_reasons[0]
    assert "6.00" in reason and "4.01" in reason and "20 images" in reason


@pytest.mark.parametrize("n", [1, 5, 9])
def test_class_with_too_few_images_is_never_flagged(n):
    c = _cls(0, 89.0, n=n, mean=90.0)
    out = apply_policy("m", [c], _policy(min_images=10), today=TODAY)
    assert not c.flagged and out.n_flagged == 0 and out.passed


def test_max_flagged_decides_pass():
    def run(max_flagged):
        classes = [_cls(i, 5.0 + i) for i in range(3)] + [_cls(9, 1.0)]
        return apply_policy("m", classes, _policy(max_flagged=max_flagged), today=TODAY)

    assert [run(k).passed for k in range(5)] == [False, False, False, True, True]
    assert run(0).n_flagged == 3


# --------------------------------------------------------------------------- outliers


def _typical(n_classes=9):
    rng = np.random.default_rng(0)
    return [_cls(i, low=float(m) - 0.3, mean=float(m)) for i, m in enumerate(rng.uniform(1.0, 1.5, n_classes))]


def test_outlier_below_threshold_is_marked_but_does_not_fail_policy():
    classes = _typical() + [_cls(9, low=3.0, mean=3.5, name="odd")]
    out = apply_policy("m", classes, _policy(as_threshold=4.0, max_flagged=0), today=TODAY)
    assert [c.name for c in classes if c.outlier] == ["odd"]
    assert out.n_outliers == 1
    assert out.n_flagged == 0 and out.passed
    assert not classes[-1].flagged


def test_outliers_only_among_classes_with_enough_images():
    classes = _typical() + [_cls(9, low=30.0, mean=40.0, n=3, name="tiny")]
    out = apply_policy("m", classes, _policy(), today=TODAY)
    assert not classes[-1].outlier and not classes[-1].flagged
    assert out.n_outliers == 0 and out.passed


def test_flagged_outlier_still_counts_as_flagged():
    """An outlier whose interval is above the threshold is a flagged class (the synthetic
    demo's leaky classes are both): being an outlier only exempts unflagged classes."""
    classes = _typical() + [_cls(9, low=8.0, mean=10.0, name="leaky")]
    out = apply_policy("m", classes, _policy(), today=TODAY)
    assert classes[-1].outlier and classes[-1].flagged
    assert out.n_flagged == 1 and not out.passed


# --------------------------------------------------------------------------- waivers


def _waiver(cls, expires=None, model="m", reason="reviewed by QA"):
    w = {"model": model, "class": cls, "reason": reason}
    if expires is not None:
        w["expires"] = expires
    return w


@pytest.mark.parametrize("key", ["class1", 1])
def test_waiver_by_name_or_index(key):
    classes = [_cls(0, 5.0), _cls(1, 6.0)]
    out = apply_policy("m", classes, _policy(max_flagged=0, waivers=[_waiver(key, expires="2026-12-31")]), today=TODAY)
    assert classes[1].flagged and classes[1].waived
    assert classes[1].waiver_reason == "reviewed by QA"
    assert classes[1].waiver_expires == "2026-12-31"
    assert not classes[0].waived
    assert out.n_waived == 1 and out.n_flagged == 1 and out.flagged_names == ["class0"]
    assert not out.passed


def test_all_flags_waived_passes():
    classes = [_cls(0, 5.0), _cls(1, 6.0), _cls(2, 1.0)]
    policy = _policy(waivers=[_waiver(0), _waiver("class1")])
    out = apply_policy("m", classes, policy, today=TODAY)
    assert out.passed and out.n_flagged == 0 and out.n_waived == 2
    assert classes[0].waiver_expires is None


def test_waiver_on_the_expiry_day_still_applies():
    c = _cls(0, 5.0)
    out = apply_policy("m", [c], _policy(waivers=[_waiver(0, expires=TODAY.isoformat())]), today=TODAY)
    assert c.waived and out.passed


def test_expired_waiver_does_not_apply_and_reason_is_recorded():
    c = _cls(0, 5.0)
    policy = _policy(waivers=[_waiver("class0", expires="2026-05-31", reason="ticket 42")])
    out = apply_policy("m", [c], policy, today=TODAY)
    assert c.flagged and not c.waived
    assert out.n_flagged == 1 and out.n_waived == 0 and not out.passed
    assert any("2026-05-31" in r and "ticket 42" in r for r in c.flag_reasons)


def test_waiver_for_another_model_does_not_apply():
    c = _cls(0, 5.0)
    out = apply_policy("m", [c], _policy(waivers=[_waiver(0, model="other")]), today=TODAY)
    assert not c.waived and not out.passed


def test_waiver_index_does_not_match_by_position_or_name_by_index():
    c = _cls(7, 5.0, name="7up")
    out = apply_policy("m", [c], _policy(waivers=[_waiver(0), _waiver("class7")]), today=TODAY)
    assert not c.waived and out.n_flagged == 1


def test_renewed_waiver_after_expired_one_applies():
    c = _cls(0, 5.0)
    policy = _policy(waivers=[_waiver(0, expires="2026-01-01"), _waiver(0, expires="2027-01-01", reason="renewed")])
    out = apply_policy("m", [c], policy, today=TODAY)
    assert c.waived and c.waiver_reason == "renewed" and out.passed


# --------------------------------------------------------------------------- class results


def test_class_results_means_and_intervals():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 30 + [2] * 12 + [3])
    n = labels.size
    as_ = rng.normal(size=n) + labels
    is_ = np.abs(rng.normal(size=n)) + 1
    con = rng.normal(size=n)
    out = class_results(labels, ["a", "b", "c", "d"], is_, as_, con, np.random.default_rng(1), n_boot=200)
    assert [c.index for c in out] == [0, 2, 3]
    assert [c.name for c in out] == ["a", "c", "d"]
    assert [c.n for c in out] == [30, 12, 1]
    for c in out:
        rows = labels == c.index
        assert c.as_mean == pytest.approx(as_[rows].mean())
        assert c.as_abs_mean == pytest.approx(np.abs(as_[rows]).mean())
        assert c.is_mean == pytest.approx(is_[rows].mean())
        assert c.as_contrast == pytest.approx(con[rows].mean())
    for c in out[:2]:
        assert c.as_abs_ci.low <= c.as_abs_mean <= c.as_abs_ci.high
        assert c.is_ci.low <= c.is_mean <= c.is_ci.high
    # one image: the interval is undefined (null), not NaN
    assert out[2].as_abs_ci.low is None and out[2].as_abs_ci.high is None


# --------------------------------------------------------------------------- figures


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 30), d=st.integers(1, 6), noise=st.floats(0.01, 3))
def test_fidelity_figures_match_sklearn(seed, n, d, noise):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d)) * rng.uniform(0.5, 3, size=d) + 1
    t = z + noise * rng.standard_normal((n, d))
    fig = fidelity_figures(t, z)
    assert set(fig) >= {"cosine", "r2", "mse"}
    assert fig["r2"] == pytest.approx(r2_score(z, t, multioutput="variance_weighted"), rel=1e-9, abs=1e-12)
    assert fig["mse"] == pytest.approx(mean_squared_error(z, t), rel=1e-9)
    cos = np.mean([t[i] @ z[i] / np.linalg.norm(t[i]) / np.linalg.norm(z[i]) for i in range(n)])
    assert fig["cosine"] == pytest.approx(cos, rel=1e-9, abs=1e-12)


def test_perfect_translation_has_unit_cosine_and_r2():
    z = np.random.default_rng(0).standard_normal((10, 4))
    fig = fidelity_figures(z.copy(), z)
    assert fig["cosine"] == pytest.approx(1.0) and fig["r2"] == pytest.approx(1.0) and fig["mse"] == 0.0


def test_zero_shot_accuracy_closed_form():
    text = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    emb = np.array([[2.0, 0.1], [0.1, 5.0], [-3.0, 1.0], [1.0, 1.1]])
    assert zero_shot_accuracy(emb, text, np.array([0, 1, 2, 1])) == 1.0
    assert zero_shot_accuracy(emb, text, np.array([0, 1, 2, 0])) == 0.75
    assert zero_shot_accuracy(emb, text, np.array([1, 0, 0, 0])) == 0.0


def test_zero_shot_accuracy_uses_cosine_for_unnormalised_prompts():
    text = np.array([[1.0, 0.0], [0.0, 10.0]])  # prompt 1 has a large norm
    emb = np.array([[1.0, 0.5]])  # cosine: 0.894 to prompt 0, 0.447 to prompt 1
    assert zero_shot_accuracy(emb, text, np.array([0])) == 1.0


def test_ratio():
    assert ratio(3.0, 1.5, null_dim=10) == 2.0
    assert ratio(3.0, 1.5, null_dim=0) is None
    assert ratio(3.0, 0.0, null_dim=10) is None
    assert ratio(None, 1.0, null_dim=10) is None
    assert ratio(1.0, None, null_dim=10) is None
    assert ratio(0.0, 2.0, null_dim=1) == 0.0


def test_logit_correlation_is_pearson_of_the_zero_shot_logits_pooled_over_images_and_classes():
    from sing_audit.analysis import logit_correlation
    from sing_audit.scores import unit_rows

    rng = np.random.default_rng(3)
    z = rng.normal(size=(37, 6)) + 3.0  # offset: cosines far from 0, as CLIP's are
    t = rng.normal(size=(5, 6))
    translated = 2.5 * z + rng.normal(scale=0.8, size=z.shape)  # scale does not matter, noise does
    expected = np.corrcoef((unit_rows(z) @ unit_rows(t).T).ravel(), (unit_rows(translated) @ unit_rows(t).T).ravel())[0, 1]
    # chunks of 4 rows: the shifted one-pass sums agree with numpy's two-pass r to round-off
    got = logit_correlation(translated, z, t, chunk=4)
    assert got == pytest.approx(expected, abs=1e-12) and 0.3 < got < 0.999
    assert logit_correlation(z * 7.0, z, t) == pytest.approx(1.0, abs=1e-12)
    # one class prompt and every image the same embedding: no variance, no r (never NaN)
    assert logit_correlation(np.ones((4, 6)), np.ones((4, 6)), t[:1]) is None


def test_zero_shot_figures_equal_the_separate_definitions_in_one_pass():
    """The model's logit correlation and both zero-shot accuracies come from one chunked
    pass; they equal logit_correlation and zero_shot_accuracy computed apart, with or
    without labels, and with no rows at all."""
    from sing_audit.analysis import logit_correlation, zero_shot_accuracy, zero_shot_figures

    rng = np.random.default_rng(4)
    z = rng.normal(size=(23, 6))
    t = rng.normal(size=(5, 6))
    translated = z + rng.normal(scale=0.7, size=z.shape)
    labels = rng.integers(0, 5, size=23)
    got = zero_shot_figures(translated, z, t, labels, chunk=4)
    assert got["logit_correlation"] == pytest.approx(logit_correlation(translated, z, t), abs=1e-12)
    assert got["target_zero_shot"] == zero_shot_accuracy(z, t, labels)
    assert got["translator_zero_shot"] == zero_shot_accuracy(translated, t, labels)
    assert 0 < got["target_zero_shot"] < 1 and got["translator_zero_shot"] != got["target_zero_shot"]
    unlabelled = zero_shot_figures(translated, z, t, None)
    assert unlabelled["target_zero_shot"] is None and unlabelled["translator_zero_shot"] is None
    assert unlabelled["logit_correlation"] == pytest.approx(got["logit_correlation"], abs=1e-12)
    # one prompt: no variance across prompts is not needed for accuracy (every image hits class 0)
    one = zero_shot_figures(np.ones((4, 6)), np.ones((4, 6)), t[:1], np.zeros(4, dtype=int))
    assert one == {"logit_correlation": None, "target_zero_shot": 1.0, "translator_zero_shot": 1.0}
