"""Model-level statistics: translator comparison, model comparisons, principal consistency."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sing_audit.analysis import compare_models
from sing_audit.cli import main


def _results(out) -> dict:
    return json.loads((out / "results.json").read_text())


def test_compare_models_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    a = np.abs(rng.normal(0, 1, 400))
    shifted = compare_models("clip", "a", a, "b", a + 1.0, np.random.default_rng(1), 300)
    assert shifted.differ and shifted.p_value < 1e-6
    assert shifted.diff_ci.low < 1.0 < shifted.diff_ci.high
    same = compare_models("clip", "a", a, "b", np.abs(rng.normal(0, 1, 400)), np.random.default_rng(1), 300)
    assert not same.differ and same.p_value > 0.01


def test_demo_models_differ_and_compared_translators_share_folds(synthetic_config, tmp_path):
    cfg = synthetic_config(
        compare_translators=[{"plugin": "linear", "alpha": 10.0}],
        probes=["null_removal", "principal_consistency"],
        policy={"max_flagged": 5},
    )
    assert main(["run", str(cfg)]) == 0
    res = _results(tmp_path / "out")
    (comp,) = res["model_comparisons"]
    assert (comp["model_a"], comp["model_b"]) == ("benign", "leaky") and comp["differ"]
    for m in res["models"]:
        (other,) = m["translator_comparison"]
        assert other["translator"] == "linear" and other["linear"] is True
        assert other["params"]["alpha"] == [10.0] * 5
        assert other["cosine"] < m["fidelity"]["cosine"]  # a heavier ridge fits worse than the CV choice
        pc = m["probes"]["principal_consistency"]
        assert pc["accuracy_principal"] > 0.9 and pc["accuracy_translated"] > 0.9
    agg = res["probe_aggregates"]["principal_consistency"]
    assert agg["models"] == ["benign@clip", "leaky@clip"] and agg["pearson_r"] is None  # fewer than 3 models


def test_nonlinear_primary_translator_is_refused(synthetic_config, monkeypatch, capsys):
    from sing_audit.builtins import linear_translator

    monkeypatch.setattr(linear_translator.LinearTranslator, "linear_map", lambda self: None)
    assert main(["run", str(synthetic_config())]) == 2
    assert "compare_translators" in capsys.readouterr().err


def test_fraction_rule_matches_the_share_of_dimensions():
    from sing_audit.nullspace import split_head

    w = np.random.default_rng(0).normal(size=(10, 40))
    for q in (0.0, 0.25, 0.5, 0.9):
        sub = split_head(w, "fraction", null_fraction=q)
        assert sub.null_dim == round(q * 40) and sub.rank + sub.null_dim == 40
    # the fraction's null space holds the directions of least singular value
    sub = split_head(w, "fraction", null_fraction=0.9)
    exact = split_head(w)
    overlap = np.linalg.svd(exact.null.T @ sub.null, compute_uv=False)
    assert np.allclose(overlap, 1.0)  # the exact null space (30 dims) lies inside the 36-dim one


def test_rank_sensitivity_curve(synthetic_config, tmp_path):
    probes = ["null_removal", {"plugin": "rank_sensitivity", "rule": "fraction", "values": [0.0, 0.5, 54 / 64, 0.95]}]
    assert main(["run", str(synthetic_config(probes=probes, policy={"max_flagged": 5}))]) == 0
    res = _results(tmp_path / "out")
    leaky = next(m for m in res["models"] if m["name"] == "leaky")
    points = leaky["probes"]["rank_sensitivity"]["points"]
    assert [p["null_dim"] for p in points] == [0, 32, 54, 61]
    assert points[0]["is_mean"] == 0.0 and points[0]["as_abs_mean"] == 0.0
    exact = points[2]  # the exact null space: same numbers as the audit, logits untouched
    assert exact["is_mean"] == pytest.approx(leaky["is_mean"], rel=1e-9)
    assert exact["as_abs_mean"] == pytest.approx(leaky["as_abs_mean"], rel=1e-9)
    assert exact["logit_drift_mean"] < 1e-6 and points[3]["logit_drift_mean"] > 1e-3
    assert points[3]["prediction_agreement"] < 1.0


def test_fraction_rule_in_config(synthetic_config, tmp_path, capsys):
    assert main(["run", str(synthetic_config(nullspace={"rule": "fraction", "null_fraction": 0.5}, policy={"max_flagged": 9}))]) == 0
    m = _results(tmp_path / "out")["models"][0]
    assert m["rank_rule"] == "fraction" and m["null_dim"] == 32
    assert main(["validate", str(synthetic_config(nullspace={"rule": "fraction"}))]) == 2
    assert "null_fraction" in capsys.readouterr().err
