"""Policy floors, the per-model sentence, the IS/AS interval, evidence and target agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sing_audit.analysis import judge_model, model_summary, policy_failures, target_agreement
from sing_audit.cli import main
from sing_audit.config import PolicyConfig
from sing_audit.results import Fidelity, ModelResult
from sing_audit.stats import bootstrap_ratio_ci

from .conftest import write_config


def _results(out) -> dict:
    return json.loads((out / "results.json").read_text())


def test_fidelity_below_the_floor_means_not_assessed(synthetic_config, tmp_path):
    """A translator below min_fidelity cannot carry a verdict: the model is not assessed
    (neither passed nor failed on its numbers), and the run exits 1."""
    assert main(["run", str(synthetic_config(policy={"max_flagged": 5, "min_fidelity": 0.99999}))]) == 1
    res = _results(tmp_path / "out")
    assert not res["passed"] and not res["assessed"]
    for m in res["models"]:
        assert not m["passed"] and not m["assessed"]
        assert m["policy_failures"] == []
        (reason,) = m["not_assessed_reasons"]
        assert reason.startswith("translator fidelity 0.9") and reason.endswith("below the floor 0.99999")
    assert res["verdict"].startswith("NOT ASSESSED:") and "fidelity" in res["verdict"]


def test_ratio_floor_fails_only_the_leaky_model(synthetic_config, tmp_path):
    assert main(["run", str(synthetic_config(policy={"max_flagged": 5, "min_is_as_ratio": 5}))]) == 1
    by_name = {m["name"]: m for m in _results(tmp_path / "out")["models"]}
    assert by_name["benign"]["passed"] and not by_name["leaky"]["passed"]
    assert "IS/AS ratio" in by_name["leaky"]["policy_failures"][0]


def test_ratio_interval_brackets_the_ratio_and_sentences_name_the_planted_classes(synthetic_config, tmp_path):
    main(["run", str(synthetic_config())])
    for m in _results(tmp_path / "out")["models"]:
        ci = m["is_as_ratio_ci"]
        assert ci["low"] < m["is_as_ratio"] < ci["high"]
        if m["name"] == "leaky":
            assert "sports car" in m["summary"] and "jellyfish" in m["summary"]
        else:
            assert "no class-specific leakage" in m["summary"]


def test_top_images_are_the_largest_absolute_as(synthetic_config, tmp_path):
    main(["run", str(synthetic_config(report={"formats": ["json"], "top_images": 5}))])
    m = next(m for m in _results(tmp_path / "out")["models"] if m["name"] == "leaky")
    assert len(m["top_images"]) == 5
    values = [abs(t["as_score"]) for t in m["top_images"]]
    assert values == sorted(values, reverse=True)
    assert {t["class_name"] for t in m["top_images"]} <= {"sports car", "jellyfish"}
    assert all(t["thumbnail"] is None for t in m["top_images"])  # precomputed: no images at hand


def test_bootstrap_ratio_ci_is_joint_and_deterministic():
    rng = np.random.default_rng(0)
    num = rng.normal(10, 1, 500)
    den = num / 5 + rng.normal(0, 0.01, 500)  # strongly correlated: the ratio is nearly constant
    low, high = bootstrap_ratio_ci(num, den, np.random.default_rng(1), 500)
    assert low < 5.0 < high and high - low < 0.05
    assert (low, high) == bootstrap_ratio_ci(num, den, np.random.default_rng(1), 500)
    assert all(np.isnan(bootstrap_ratio_ci(num[:1], den[:1], np.random.default_rng(1))))


def _model(name, target, as_abs, **kw):
    base = dict(
        name=name, backbone=name, target=target, random_weights=False, rank_rule="rank", rank=10,
        null_dim=5, num_features=15, num_classes=10, null_energy=0.3, n_images=100, as_abs_mean=as_abs,
        is_mean=3.0, is_as_ratio=3.0 / as_abs if as_abs else None,
    )
    base.update(kw)
    return ModelResult(**base)


def test_target_agreement_orders_models():
    models = [
        _model("a", "clip", 1.0), _model("b", "clip", 2.0), _model("c", "clip", 3.0),
        _model("a", "eva", 1.5), _model("b", "eva", 2.5), _model("c", "eva", 2.0),
    ]
    (agree,) = target_agreement(models)
    assert agree.targets == ["clip", "eva"] and agree.same_order is False
    assert agree.kendall_tau == pytest.approx(1 / 3)
    assert target_agreement(models[:3]) == []
    same = target_agreement([_model("a", "clip", 1.0), _model("b", "clip", 2.0), _model("a", "eva", 5.0), _model("b", "eva", 6.0)])
    assert same[0].same_order and same[0].kendall_tau == pytest.approx(1.0)


def test_summary_for_no_null_space_random_weights_and_low_fidelity():
    policy = PolicyConfig()
    m = _model("vit", "clip", 0.0, null_dim=0, is_as_ratio=None, random_weights=True, fidelity=Fidelity(cosine=0.2), n_judged=3)
    judged = judge_model(m, policy)
    text = judged.summary
    assert text.startswith("Pipeline check with random weights")
    assert "not assessed" in text and "no exact null space" in text
    assert not judged.passed and not judged.assessed and judged.policy_failures == []
    assert policy_failures(m, policy) == []
    ok = judge_model(_model("vit", "clip", 1.0, fidelity=Fidelity(cosine=0.2), n_judged=3), policy)
    assert ok.assessed and ok.passed and "Caution" in ok.summary and model_summary(ok, policy) == ok.summary


def test_two_targets_record_agreement(tmp_path, scenario_dir):
    rng = np.random.default_rng(3)
    with np.load(scenario_dir / "clip.npz") as clip:
        np.savez(
            tmp_path / "eva.npz",
            image_embeddings=clip["image_embeddings"] @ np.linalg.qr(rng.normal(size=(32, 32)))[0],
            text_embeddings=clip["text_embeddings"] @ np.eye(32),
            image_ids=clip["image_ids"],
        )
    cfg = write_config(
        tmp_path,
        {
            "output": "out",
            "targets": [
                {"plugin": "precomputed", "name": "clip", "path": str(scenario_dir / "clip.npz")},
                {"plugin": "precomputed", "name": "rotated", "path": "eva.npz"},
            ],
            "backbones": [
                {"name": "benign", "plugin": "precomputed", "path": str(scenario_dir / "benign.npz")},
                {"name": "leaky", "plugin": "precomputed", "path": str(scenario_dir / "leaky.npz")},
            ],
            "run": {"bootstrap": 100},
            "policy": {"max_flagged": 10},
        },
    )
    assert main(["run", str(cfg)]) == 0
    res = _results(tmp_path / "out")
    assert len(res["models"]) == 4
    (agree,) = res["target_agreement"]
    assert agree["targets"] == ["clip", "rotated"] and agree["models"] == ["benign", "leaky"]
