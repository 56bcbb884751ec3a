"""No pass without a measurement: the "not assessed" outcome, end to end and as a rule.

A model is not assessed when no class has ``policy.min_images`` images, when its head has
no null space under the rule, or when its translator misses the fidelity floor. Such a
model never passes; a run with one exits 1 unless ``policy.allow_not_assessed``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sing_audit.analysis import apply_policy, audit_passed, judge_model, verdict_text
from sing_audit.cli import main
from sing_audit.config import PolicyConfig
from sing_audit.results import ClassResult, Fidelity, Interval, ModelResult

from .conftest import save_npz, write_config

DEMO = Path(__file__).resolve().parents[1] / "examples" / "synthetic" / "audit.yaml"
FORMATS = "[json, csv, html, junit, markdown]"


def _demo(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    """``sing-audit run`` of the shipped demo, as a user types it, into ``tmp_path/out``."""
    cmd = [sys.executable, "-m", "sing_audit", "run", str(DEMO), "-o", f"output={tmp_path / 'out'}",
           "-o", f"report.formats={FORMATS}", "-o", "run.bootstrap=200"]
    for item in overrides:
        cmd += ["-o", item]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- end to end


def test_no_class_with_enough_images_is_not_a_pass(tmp_path):
    """The issue's case: min_images 100 over 60 images per class exited 0 and said the
    leaky model "shows no class-specific leakage above 4°"."""
    proc = _demo(tmp_path, "policy.min_images=100")
    assert proc.returncode == 1, proc.stderr
    out = tmp_path / "out"
    res = _results(out)
    assert res["passed"] is False and res["assessed"] is False
    assert res["verdict"].startswith("NOT ASSESSED:")
    for m in res["models"]:
        assert m["assessed"] is False and m["passed"] is False
        assert m["not_assessed_reasons"] == ["0 of 10 classes have ≥ 100 images"]
        assert m["n_judged"] == 0 and m["n_flagged"] == 0
        assert "no class-specific leakage" not in m["summary"] and "not assessed" in m["summary"]

    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert summary.splitlines()[0].endswith("— NOT ASSESSED")
    assert "0 of 10 classes have ≥ 100 images" in summary
    assert "no class-specific leakage" not in summary
    assert "| 0 of 0 judged | NOT ASSESSED |" in summary

    root = ET.parse(out / "junit.xml").getroot()
    assert (root.get("errors"), root.get("failures"), root.get("skipped")) == ("2", "0", "0")
    for suite in root.iter("testsuite"):
        policy = next(c for c in suite.iter("testcase") if c.get("name") == "policy")
        (error,) = policy.findall("error")
        assert error.get("type") == "NotAssessed" and "0 of 10 classes" in error.get("message")
        props = {p.get("name"): p.get("value") for p in suite.iter("property")}
        assert props["assessed"] == "false" and props["n_judged"] == "0"

    html = (out / "report.html").read_text(encoding="utf-8")
    assert '<div class="verdict-word">NOT ASSESSED</div>' in html
    assert "not assessed: 0 of 10 classes have ≥ 100 images" in html

    assert "0 flagged of 0 judged — NOT ASSESSED" in proc.stdout
    assert "exit 1: a model could not be assessed, so the audit cannot pass" in proc.stdout


def test_allow_not_assessed_lets_the_run_pass_but_still_says_so(tmp_path):
    proc = _demo(tmp_path, "policy.min_images=100", "policy.allow_not_assessed=true")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    res = _results(out)
    assert res["passed"] is True and res["assessed"] is False
    assert all(m["assessed"] is False and m["passed"] is False for m in res["models"])
    assert "NOT ASSESSED (allowed by policy.allow_not_assessed)" in res["verdict"]
    root = ET.parse(out / "junit.xml").getroot()
    assert (root.get("errors"), root.get("failures"), root.get("skipped")) == ("0", "0", "2")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "could not be assessed, which the policy allows" in html


def test_flagged_counts_say_how_many_classes_were_judged(tmp_path):
    proc = _demo(tmp_path)
    assert proc.returncode == 1, proc.stderr
    out = tmp_path / "out"
    assert "2 flagged of 10 judged — FAILED" in proc.stdout
    assert "0 flagged of 10 judged — PASSED" in proc.stdout
    res = _results(out)
    leaky = next(m for m in res["models"] if m["name"] == "leaky")
    assert leaky["n_judged"] == 10 and leaky["assessed"] and not leaky["passed"]
    assert "2 flagged class(es) of 10 judged" in leaky["policy_failures"][0]
    assert "2 of 10 judged" in (out / "summary.md").read_text(encoding="utf-8")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert '<td class="r">2 of 10</td>' in html
    # the policy sentence says what the policy does: the demo's flagged classes are outliers and count
    assert {c["name"] for c in leaky["classes"] if c["flagged"] and c["outlier"]} == {"sports car", "jellyfish"}
    assert "a flagged class counts whether or not it is an outlier" in html
    assert "do not count" not in html


def _no_null_space(tmp_path: Path, **policy) -> Path:
    """A precomputed head with more classes than features (m ≤ c: no exact null space),
    50 images per class, and a translator that fits well."""
    rng = np.random.default_rng(0)
    n, m, c, d = 200, 6, 4, 6
    feats = rng.normal(size=(n, m)).astype(np.float32)
    save_npz(
        tmp_path / "b.npz", features=feats, labels=np.arange(n) % c, head_weight=rng.normal(size=(c + 4, m)).astype(np.float32)[:c + 4],
        class_names=np.array([f"class{k}" for k in range(c + 4)]), image_ids=np.array([f"i{k}" for k in range(n)]),
    )
    save_npz(
        tmp_path / "t.npz", image_embeddings=feats @ rng.normal(size=(m, d)).astype(np.float32),
        text_embeddings=rng.normal(size=(c + 4, d)).astype(np.float32), image_ids=np.array([f"i{k}" for k in range(n)]),
    )
    return write_config(
        tmp_path,
        {
            "output": "out",
            "target": {"plugin": "precomputed", "path": "t.npz"},
            "backbones": [{"name": "square", "plugin": "precomputed", "path": "b.npz"}],
            "run": {"bootstrap": 100},
            "policy": policy,
        },
    )


@pytest.mark.parametrize("policy", [{}, {"min_is_as_ratio": 2.0}, {"min_fidelity": 0.1}, {"min_is_as_ratio": 0.0, "min_fidelity": -1.0}])
def test_head_without_null_space_is_not_assessed_whatever_the_floors(tmp_path, policy):
    assert main(["run", str(_no_null_space(tmp_path, **policy))]) == 1
    (m,) = _results(tmp_path / "out")["models"]
    assert m["null_dim"] == 0 and m["n_judged"] == 4
    assert m["assessed"] is False and m["passed"] is False and m["policy_failures"] == []
    assert m["not_assessed_reasons"] == [
        "null dimension 0 under rule rank: this head has no exact null space; rule energy or fraction audits an approximate one"
    ]


def test_an_approximate_null_space_is_assessed(tmp_path):
    """The reason's advice holds: the fraction rule audits the same head."""
    cfg = _no_null_space(tmp_path)
    assert main(["run", str(cfg), "-o", "nullspace={rule: fraction, null_fraction: 0.5}"]) in (0, 1)
    (m,) = _results(tmp_path / "out")["models"]
    assert m["null_dim"] == 3 and m["assessed"] is True and m["not_assessed_reasons"] == []


# --------------------------------------------------------------------------- the rule


def _model(**kw) -> ModelResult:
    base = dict(
        name="m", backbone="m", target="t", random_weights=False, rank_rule="rank", rank=10, null_dim=5,
        num_features=15, num_classes=10, null_energy=0.3, n_images=100, is_mean=3.0, as_abs_mean=1.0,
        is_as_ratio=3.0, n_judged=10, fidelity=Fidelity(cosine=0.9),
        classes=[ClassResult(index=k, name=f"c{k}", n=10) for k in range(10)],
    )
    base.update(kw)
    return ModelResult(**base)


@settings(max_examples=60, deadline=None, database=None)
@given(
    n_judged=st.integers(0, 3), null_dim=st.integers(0, 2), cosine=st.floats(0, 1), floor=st.none() | st.floats(0, 1),
    n_flagged=st.integers(0, 3), max_flagged=st.integers(0, 2),
)
def test_judgement_properties(n_judged, null_dim, cosine, floor, n_flagged, max_flagged):
    policy = PolicyConfig(min_fidelity=floor, max_flagged=max_flagged)
    classes = [ClassResult(index=k, name=f"c{k}", n=10, as_abs_mean=5.0, flagged=k < n_flagged) for k in range(10)]
    m = judge_model(_model(n_judged=n_judged, null_dim=null_dim, fidelity=Fidelity(cosine=cosine), n_flagged=n_flagged,
                           flagged_classes=[f"c{k}" for k in range(n_flagged)], classes=classes), policy)
    expected_reasons = (n_judged == 0) + (null_dim == 0) + (floor is not None and cosine < floor)
    assert len(m.not_assessed_reasons) == expected_reasons
    assert m.assessed == (expected_reasons == 0)
    # a model that was not assessed never passes, and carries no policy failure of its own
    if not m.assessed:
        assert not m.passed and m.policy_failures == [] and m.outcome == "not assessed"
    else:
        assert m.passed == (n_flagged <= max_flagged)
        assert m.outcome == ("passed" if m.passed else "failed")


@settings(max_examples=60, deadline=None, database=None)
@given(outcomes=st.lists(st.sampled_from(["passed", "failed", "not assessed"]), min_size=1, max_size=5), allow=st.booleans())
def test_audit_verdict_properties(outcomes, allow):
    policy = PolicyConfig(allow_not_assessed=allow)
    models = [
        _model(name=f"m{i}", assessed=o != "not assessed", passed=o == "passed",
               not_assessed_reasons=["0 of 10 classes have ≥ 10 images"] if o == "not assessed" else [],
               policy_failures=["2 flagged class(es) of 10 judged (a, b), more than the 0 allowed"] if o == "failed" else [])
        for i, o in enumerate(outcomes)
    ]
    passed = audit_passed(models, policy)
    assert passed == ("failed" not in outcomes and (allow or "not assessed" not in outcomes))
    text = verdict_text(models, passed, policy)
    word = "PASSED" if passed else "FAILED" if "failed" in outcomes else "NOT ASSESSED"
    assert text.startswith(word + ":")
    assert ("NOT ASSESSED" in text) == ("not assessed" in outcomes)


def test_outliers_need_ten_judged_classes():
    def classes(k):
        out = [ClassResult(index=i, name=f"c{i}", n=20, as_abs_mean=1.0 + 0.01 * i, as_abs_ci=Interval(low=0.5, high=1.5)) for i in range(k - 1)]
        return out + [ClassResult(index=k - 1, name="odd", n=20, as_abs_mean=3.5, as_abs_ci=Interval(low=3.0, high=3.9))]

    few = classes(4)
    outcome = apply_policy("m", few, PolicyConfig())
    assert not outcome.outliers_computed and outcome.n_outliers == 0 and not any(c.outlier for c in few)
    enough = classes(10)
    outcome = apply_policy("m", enough, PolicyConfig())
    assert outcome.outliers_computed and [c.name for c in enough if c.outlier] == ["odd"]
