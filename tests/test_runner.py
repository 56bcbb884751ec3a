"""End-to-end audits on the synthetic scenario and on precomputed files, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sing_audit
from sing_audit.cli import main
from sing_audit.synthetic import CLASS_NAMES, PLANTED

from .conftest import save_npz, write_config

MODEL_FIELDS = {
    "name", "target", "random_weights", "rank_rule", "rank", "null_dim", "null_energy", "is_mean",
    "as_abs_mean", "is_as_ratio", "fidelity", "classes",
}
CLASS_FIELDS = {"index", "name", "n", "as_mean", "as_abs_mean", "as_contrast", "is_mean", "flagged", "flag_reasons", "outlier"}


def _results(out) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, scenario_dir):
    """The synthetic demo, run once through the CLI."""
    from .conftest import write_config as wc

    folder = tmp_path_factory.mktemp("demo")
    cfg = wc(
        folder,
        {
            "name": "synthetic",
            "output": "out",
            "target": {"plugin": "precomputed", "name": "clip", "path": str(scenario_dir / "clip.npz")},
            "backbones": [
                {"name": "benign", "plugin": "precomputed", "path": str(scenario_dir / "benign.npz")},
                {"name": "leaky", "plugin": "precomputed", "path": str(scenario_dir / "leaky.npz")},
            ],
            "report": {"formats": ["json", "csv", "html"]},
        },
    )
    code = main(["run", str(cfg)])
    return code, folder / "out", cfg


def test_demo_fails_policy_with_exactly_the_planted_classes(demo_run):
    code, out, _ = demo_run
    assert code == 1
    res = _results(out)
    assert res["passed"] is False
    flagged = {(m["name"], c["name"]) for m in res["models"] for c in m["classes"] if c["flagged"]}
    assert flagged == {("leaky", name) for name in PLANTED}
    benign = next(m for m in res["models"] if m["name"] == "benign")
    assert benign["n_flagged"] == 0


def test_results_json_contract(demo_run):
    _, out, _ = demo_run
    res = _results(out)
    assert {"schema_version", "passed", "models"} <= set(res)
    assert len(res["models"]) == 2
    for m in res["models"]:
        assert MODEL_FIELDS <= set(m)
        assert m["rank_rule"] == "rank" and m["rank"] == 10 and m["null_dim"] == 54
        assert m["random_weights"] is False
        assert 0 < m["null_energy"] < 1
        assert {c["name"] for c in m["classes"]} == set(CLASS_NAMES)
        for c in m["classes"]:
            assert CLASS_FIELDS <= set(c)
            assert c["n"] == 60
        assert {"cosine", "r2", "mse"} <= set(m["fidelity"])
        assert m["sanity"]["classifier_top1"] > 0.95


def test_class_scores_match_constructed_truth(demo_run, truth):
    _, out, _ = demo_run
    for m in _results(out)["models"]:
        for c in m["classes"]:
            assert abs(c["as_abs_mean"] - truth["class_as_abs_mean"][m["name"]][c["name"]]) < 1.5


def test_null_removal_keeps_logits(demo_run):
    _, out, _ = demo_run
    for m in _results(out)["models"]:
        assert m["logit_drift"]["relative_max"] < 1e-6
        assert m["logit_drift"]["prediction_agreement"] == 1.0


def test_outputs_written(demo_run):
    _, out, _ = demo_run
    res = _results(out)
    for rel in ("report.html", "classes.csv", "config.resolved.yaml", "logs/run.log"):
        assert (out / rel).is_file(), rel
    csv_lines = (out / res["models"][0]["files"]["images_csv"]).read_text().splitlines()
    assert csv_lines[0].startswith("image_id,label,class_name,predicted,fold,is,as,as_contrast")
    assert len(csv_lines) == 601
    prov = res["provenance"]
    assert prov["versions"]["sing-audit"] == sing_audit.__version__
    assert prov["seed"] == 0 and prov["config"]["backbones"][0]["name"] == "benign"


def test_rerun_is_served_from_cache_and_identical(demo_run, monkeypatch):
    code, out, cfg = demo_run
    before = _results(out)
    from sing_audit.builtins import linear_translator

    def no_fit(self, *a, **k):
        raise AssertionError("translator refitted although nothing changed")

    monkeypatch.setattr(linear_translator.LinearTranslator, "fit", no_fit)
    assert main(["run", str(cfg)]) == code
    after = _results(out)
    for a, b in zip(before["models"], after["models"]):
        assert a["classes"] == b["classes"] and a["is_mean"] == b["is_mean"]


def test_corrupt_cached_translator_is_refitted(tmp_path, synthetic_config):
    cfg = synthetic_config()
    assert main(["run", str(cfg)]) == 1
    states = sorted((tmp_path / "out" / "cache" / "translators").rglob("*.safetensors"))
    assert states
    states[0].write_bytes(b"not a safetensors file")
    assert main(["run", str(cfg)]) == 1
    assert states[0].stat().st_size > 100


def test_python_api_returns_typed_result(synthetic_config):
    result = sing_audit.run(synthetic_config(policy={"max_flagged": 2}))
    assert isinstance(result, sing_audit.AuditResult)
    assert result.passed is True
    assert result.model("leaky").n_flagged == 2


def test_waivers_let_the_policy_pass_until_they_expire(synthetic_config, tmp_path):
    waivers = [{"model": "leaky", "class": name, "reason": "known, tracked in TICKET-1", "expires": "2999-01-01"} for name in PLANTED]
    assert main(["run", str(synthetic_config(policy={"waivers": waivers}))]) == 0
    res = _results(tmp_path / "out")
    waived = [c for m in res["models"] for c in m["classes"] if c["waived"]]
    assert {c["name"] for c in waived} == set(PLANTED)
    expired = [dict(w, expires="2001-01-01") for w in waivers]
    assert main(["run", str(synthetic_config(policy={"waivers": expired}))]) == 1
    reasons = [r for m in _results(tmp_path / "out")["models"] for c in m["classes"] for r in c["flag_reasons"]]
    assert any("waiver expired" in r for r in reasons)


def test_overrides_change_the_policy(synthetic_config):
    cfg = synthetic_config()
    assert main(["run", str(cfg), "-o", "policy.as_threshold=30"]) == 0


def test_approximate_rule_reports_logit_change(synthetic_config, tmp_path):
    assert main(["run", str(synthetic_config(nullspace={"rule": "fixed", "rank": 5}, policy={"max_flagged": 99}))]) == 0
    m = _results(tmp_path / "out")["models"][0]
    assert m["rank_rule"] == "fixed" and m["rank"] == 5 and m["null_dim"] == 59
    assert m["logit_drift"]["relative_max"] > 1e-3
    assert m["logit_drift"]["prediction_agreement"] < 1.0


def _precomputed(tmp_path, n=40, m=6, c=8, d=5, seed=0, **overrides):
    """A small precomputed backbone/target pair; keyword arguments replace arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "features": rng.normal(size=(n, m)).astype(np.float32),
        "labels": np.arange(n) % c,
        "head_weight": rng.normal(size=(c, m)).astype(np.float32),
        "head_bias": np.zeros(c, dtype=np.float32),
        "class_names": np.array([f"class{k}" for k in range(c)]),
        "image_ids": np.array([f"i{k}" for k in range(n)]),
    }
    target = {
        "image_embeddings": rng.normal(size=(n, d)).astype(np.float32),
        "text_embeddings": rng.normal(size=(c, d)).astype(np.float32),
        "image_ids": np.array([f"i{k}" for k in range(n)]),
    }
    for key, value in overrides.items():
        group, _, name = key.partition("__")
        (arrays if group == "b" else target).pop(name, None)
        if value is not None:
            (arrays if group == "b" else target)[name] = value
    save_npz(tmp_path / "b.npz", **arrays)
    save_npz(tmp_path / "t.npz", **target)
    return write_config(
        tmp_path,
        {
            "output": "out",
            "target": {"plugin": "precomputed", "path": "t.npz"},
            "backbones": [{"name": "small", "plugin": "precomputed", "path": "b.npz"}],
            "run": {"bootstrap": 100},
        },
    )


def test_head_without_null_space_has_undefined_ratio_and_is_not_assessed(tmp_path):
    """m ≤ c: no exact null space, so nothing can leak by construction; that is not a pass."""
    cfg = _precomputed(tmp_path, m=6, c=8)
    assert main(["run", str(cfg)]) == 1
    m = _results(tmp_path / "out")["models"][0]
    assert m["null_dim"] == 0 and m["rank"] == 6
    assert m["is_as_ratio"] is None
    assert m["is_mean"] == 0.0 and m["as_abs_mean"] == 0.0
    assert not m["assessed"] and not m["passed"]
    assert "null dimension 0 under rule rank: this head has no exact null space; rule energy or fraction audits an approximate one" in m["not_assessed_reasons"]


def test_unlabeled_data_uses_predicted_classes(tmp_path):
    cfg = _precomputed(tmp_path, m=12, c=4, b__labels=None)
    assert main(["run", str(cfg)]) in (0, 1)
    m = _results(tmp_path / "out")["models"][0]
    assert m["labels_source"] == "predicted"
    assert m["sanity"]["classifier_top1"] is None


def test_safetensors_inputs(tmp_path, scenario):
    from safetensors.numpy import save_file

    w, b = scenario.heads["leaky"]
    meta = {"class_names": json.dumps(list(CLASS_NAMES)), "image_ids": json.dumps(scenario.image_ids)}
    save_file({"features": scenario.features["leaky"], "labels": scenario.labels, "head_weight": w, "head_bias": b}, str(tmp_path / "b.safetensors"), metadata=meta)
    save_file(
        {"image_embeddings": scenario.embeddings, "text_embeddings": scenario.text.astype(np.float32)},
        str(tmp_path / "t.safetensors"),
        metadata={"image_ids": json.dumps(scenario.image_ids)},
    )
    cfg = write_config(
        tmp_path,
        {
            "output": "out",
            "target": {"plugin": "precomputed", "path": "t.safetensors"},
            "backbones": [{"name": "leaky", "plugin": "precomputed", "path": "b.safetensors"}],
            "run": {"bootstrap": 100},
        },
    )
    assert main(["run", str(cfg)]) == 1
    flagged = {c["name"] for c in _results(tmp_path / "out")["models"][0]["classes"] if c["flagged"]}
    assert flagged == set(PLANTED)


# --------------------------------------------------------------------------- bad input: exit 2


def _bad(cfg, capsys, *needles, args=()):
    assert main(["run", str(cfg), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_nan_features_name_model_and_image(tmp_path, capsys):
    feats = np.random.default_rng(0).normal(size=(40, 12)).astype(np.float32)
    feats[7, 3] = np.nan
    cfg = _precomputed(tmp_path, m=12, b__features=feats)
    _bad(cfg, capsys, "small", "i7", "NaN")


def test_head_feature_dimension_mismatch(tmp_path, capsys):
    cfg = _precomputed(tmp_path, m=12, b__head_weight=np.ones((8, 10), dtype=np.float32))
    _bad(cfg, capsys, "12", "10")


def test_text_and_image_embedding_dimension_mismatch(tmp_path, capsys):
    cfg = _precomputed(tmp_path, m=12, t__text_embeddings=np.ones((8, 3), dtype=np.float32))
    _bad(cfg, capsys, "text_embeddings")


def test_misaligned_image_ids(tmp_path, capsys):
    cfg = _precomputed(tmp_path, m=12, t__image_ids=np.array([f"other{k}" for k in range(40)]))
    _bad(cfg, capsys, "image_ids", "i0")


def test_row_count_mismatch_without_ids(tmp_path, capsys):
    cfg = _precomputed(tmp_path, m=12, b__image_ids=None, t__image_ids=None, t__image_embeddings=np.ones((39, 5), dtype=np.float32))
    _bad(cfg, capsys, "40", "39")


def test_object_array_class_names_refused_without_pickle(tmp_path, capsys):
    cfg = _precomputed(tmp_path, m=12, b__class_names=np.array([f"c{k}" for k in range(8)], dtype=object))
    _bad(cfg, capsys, "class_names")


def test_missing_file(tmp_path, capsys):
    cfg = _precomputed(tmp_path, m=12)
    (tmp_path / "b.npz").unlink()
    _bad(cfg, capsys, "not found", "b.npz")


def test_labels_out_of_range(tmp_path, capsys):
    cfg = _precomputed(tmp_path, m=12, b__labels=np.full(40, 9))
    _bad(cfg, capsys, "labels")


def test_unknown_plugin_suggests_close_match(synthetic_config, capsys):
    cfg = synthetic_config(translator={"plugin": "linaer"})
    _bad(cfg, capsys, "did you mean", '"linear"', "translator")


def test_misspelled_key(synthetic_config, capsys):
    cfg = synthetic_config(policy={"as_treshold": 3})
    _bad(cfg, capsys, "policy.as_treshold", "did you mean", "as_threshold")


def test_output_folder_of_another_audit_is_refused_unless_forced(synthetic_config, scenario_dir, tmp_path, capsys):
    cfg = synthetic_config()
    assert main(["run", str(cfg)]) == 1
    other = synthetic_config(backbones=[{"name": "leaky", "plugin": "precomputed", "path": str(scenario_dir / "leaky.npz")}])
    _bad(other, capsys, "different audit", "--force")
    assert main(["run", str(other), "--force"]) == 1
    assert [m["name"] for m in _results(tmp_path / "out")["models"]] == ["leaky"]


def test_non_empty_foreign_folder_is_refused(synthetic_config, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    _bad(synthetic_config(), capsys, "not empty")
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_internal_error_exits_70_and_names_the_log(synthetic_config, monkeypatch, capsys):
    from sing_audit.builtins import null_removal

    def boom(self, ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(null_removal.NullRemoval, "run", boom)
    assert main(["run", str(synthetic_config())]) == 70
    err = capsys.readouterr().err
    assert "internal error" in err and "run.log" in err and "boom" in err


def test_interrupt_exits_130(synthetic_config, monkeypatch):
    import sing_audit.pipeline as pipeline

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_audit", interrupted)
    assert main(["run", str(synthetic_config())]) == 130


def test_html_escapes_user_controlled_class_names(tmp_path):
    names = np.array(["<img src=x onerror=alert(1)>"] + [f"c{k}" for k in range(7)])
    cfg = _precomputed(tmp_path, m=12, b__class_names=names)
    main(["run", str(cfg)])
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
