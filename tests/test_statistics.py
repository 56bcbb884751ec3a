"""Model-level statistics: translator comparison, model comparisons, principal consistency."""

from __future__ import annotations

import json

import numpy as np

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
    from sing_audit.plugins import linear_translator

    monkeypatch.setattr(linear_translator.LinearTranslator, "linear_map", lambda self: None)
    assert main(["run", str(synthetic_config())]) == 2
    assert "compare_translators" in capsys.readouterr().err
