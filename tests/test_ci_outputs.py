"""CI outputs: junit.xml and summary.md reporters, `sing-audit report` and `sing-audit diff`."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from sing_audit.cli import main
from sing_audit.compare import diff_results, load_result
from sing_audit.builtins.ci_reporters import (
    JUnitReporter,
    MarkdownReporter,
    md_escape,
    render_markdown,
)
from sing_audit.results import AuditResult
from sing_audit.synthetic import CLASS_NAMES, PLANTED, make_scenario

from .conftest import write_config

ALL_FORMATS = ["json", "csv", "html", "junit", "markdown"]
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture(autouse=True)
def _no_step_summary(monkeypatch):
    """Never append to a real CI's step summary from the tests."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


def _write_variant(folder: Path, b: float) -> Path:
    """The synthetic scenario with planted leakage of strength ``b`` (the demo uses 1.0)."""
    folder.mkdir(parents=True, exist_ok=True)
    s = make_scenario(b=b)
    names, ids = np.array(CLASS_NAMES, dtype=str), np.array(s.image_ids, dtype=str)
    for model in ("benign", "leaky"):
        w, bias = s.heads[model]
        np.savez(folder / f"{model}.npz", features=s.features[model], labels=s.labels, head_weight=w, head_bias=bias, class_names=names, image_ids=ids)
    np.savez(folder / "clip.npz", image_embeddings=s.embeddings, text_embeddings=s.text.astype(np.float32), image_ids=ids)
    return folder


def _audit(folder: Path, data: Path) -> Path:
    cfg = write_config(
        folder,
        {
            "name": "synthetic",
            "output": "out",
            "target": {"plugin": "precomputed", "name": "clip", "path": str(data / "clip.npz")},
            "backbones": [
                {"name": "benign", "plugin": "precomputed", "path": str(data / "benign.npz")},
                {"name": "leaky", "plugin": "precomputed", "path": str(data / "leaky.npz")},
            ],
            "translator": {"plugin": "linear", "alpha": 0.002},  # fixed α: no cross-validation, quicker
            "report": {"formats": ALL_FORMATS},
            "run": {"bootstrap": 300},
        },
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("GITHUB_STEP_SUMMARY", raising=False)
        assert main(["run", str(cfg)]) == 1
    return folder / "out"


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, scenario_dir) -> Path:
    """The synthetic demo (planted leakage in "sports car" and "jellyfish" of "leaky")."""
    return _audit(tmp_path_factory.mktemp("run_a"), scenario_dir)


@pytest.fixture(scope="module")
def run_b(tmp_path_factory) -> Path:
    """The same audit of a "later checkpoint" whose planted leakage is stronger (b = 1.5)."""
    folder = tmp_path_factory.mktemp("run_b")
    return _audit(folder, _write_variant(folder / "data", b=1.5))


def _result(out: Path) -> AuditResult:
    return AuditResult.model_validate_json((out / "results.json").read_text(encoding="utf-8"))


def _hostile(result: AuditResult) -> AuditResult:
    """The result with user-controlled text an attacker would choose."""
    r = result.model_copy(deep=True)
    leaky = r.model("leaky")
    names = {5: XSS, 6: "a]]>b|c`d`\x00\x1b[31m\x0c\ud800 &amp; **x** $y$"}
    for c in leaky.classes:
        if c.index in names:
            c.name = names[c.index]
    leaky.flagged_classes = [names[5], names[6]]
    leaky.summary = f"hides meaning in {XSS} and ]]> with | pipes"
    leaky.policy_failures = [f"2 flagged class(es) ({XSS}, ]]>\x07), more than the 0 allowed"]
    return r


# --------------------------------------------------------------------------- junit.xml


def test_junit_has_a_suite_per_model_and_a_case_per_flagged_class(run_a):
    root = ET.parse(run_a / "junit.xml").getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "3", "0")
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"benign@clip", "leaky@clip"}
    benign = suites["benign@clip"].findall("testcase")
    assert [c.get("name") for c in benign] == ["policy"] and benign[0].find("failure") is None
    leaky = suites["leaky@clip"]
    cases = leaky.findall("testcase")
    assert len(cases) == 3 and leaky.get("failures") == "3"
    assert all(c.find("failure") is not None for c in cases)
    policy = next(c for c in cases if c.get("name") == "policy")
    assert policy.find("failure").get("message") == "; ".join(_result(run_a).model("leaky").policy_failures)
    class_cases = [c for c in cases if c.get("name") != "policy"]
    assert {c.get("name").split(": ", 1)[1] for c in class_cases} == set(PLANTED)
    for c in class_cases:
        assert "lower bound is above the 4° threshold" in c.find("failure").get("message")
    assert _result(run_a).files["junit"] == "junit.xml"


def test_junit_stays_well_formed_with_hostile_names(run_a, tmp_path):
    [path] = JUnitReporter().write(_hostile(_result(run_a)), tmp_path, "junit")
    raw = path.read_bytes().decode("utf-8")
    root = ET.fromstring(raw.encode("utf-8"))  # well-formed, or this raises
    assert "<img" not in raw and "&lt;img src=x onerror=alert(1)&gt;" in raw
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", raw)
    names = [c.get("name") for c in root.iter("testcase")]
    assert f"class 5: {XSS}" in names  # the text survives, as text
    odd = next(n for n in names if n.startswith("class 6"))
    assert "]]>" in odd and "\x00" not in odd and "\ud800" not in odd and "[31m" in odd
    assert root.get("failures") == "3"


def test_junit_waived_class_is_skipped_with_its_reason(run_a, tmp_path):
    r = _result(run_a).model_copy(deep=True)
    leaky = r.model("leaky")
    for c in leaky.classes:
        if c.flagged:
            c.waived, c.waiver_reason, c.waiver_expires = True, "known, TICKET-7", "2999-01-01"
    leaky.n_flagged, leaky.n_waived, leaky.passed, leaky.policy_failures = 0, 2, True, []
    r.passed = all(m.passed for m in r.models)
    [path] = JUnitReporter().write(r, tmp_path, "junit")
    root = ET.parse(path).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("4", "0", "2")
    skipped = [c.find("skipped") for c in root.iter("testcase") if c.find("skipped") is not None]
    assert all("known, TICKET-7" in s.get("message") and "2999-01-01" in s.get("message") for s in skipped)


def test_junit_flagged_classes_within_max_flagged_do_not_fail(run_a, tmp_path):
    r = _result(run_a).model_copy(deep=True)
    r.policy = {**r.policy, "max_flagged": 2}
    leaky = r.model("leaky")
    leaky.passed, leaky.policy_failures = True, []
    [path] = JUnitReporter().write(r, tmp_path, "junit")
    root = ET.parse(path).getroot()
    assert (root.get("tests"), root.get("failures")) == ("4", "0")
    outs = [c.find("system-out").text for c in root.iter("testcase") if c.get("name").startswith("class ")]
    assert len(outs) == 2 and all("within the policy's max_flagged = 2" in o for o in outs)
    r.policy["max_flagged"] = 1  # one more flagged class than allowed: both fail again
    [path] = JUnitReporter().write(r, tmp_path, "junit")
    assert ET.parse(path).getroot().get("failures") == "2"


# --------------------------------------------------------------------------- summary.md


def test_markdown_summary_content(run_a):
    text = (run_a / "summary.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert "FAIL" in lines[0] and "PASS" not in lines[0]
    assert not any(0x2600 <= ord(ch) <= 0x27BF or ord(ch) >= 0x1F000 for ch in text), "no emoji"
    rows = [line for line in lines if line.startswith(("| benign | clip", "| leaky | clip"))]
    assert len(rows) == 2
    leaky = _result(run_a).model("leaky")
    row = next(r for r in rows if r.startswith("| leaky "))
    assert f"{leaky.is_as_ratio:.2f} [{leaky.is_as_ratio_ci.low:.2f}, {leaky.is_as_ratio_ci.high:.2f}]" in row
    assert "| 54 (rank) |" in row and "| 2 of 10 judged |" in row
    assert "### Flagged classes" in text
    for name in PLANTED:
        c = next(c for c in leaky.classes if c.name == name)
        assert any(name in line and f"{c.as_abs_mean:.2f}°" in line and f"{c.as_abs_ci.low:.2f}–" in line for line in lines)
    assert md_escape(leaky.summary) in text
    assert "RANDOM WEIGHTS" not in text


def _cells(row: str) -> list[str]:
    """Table cells, splitting on unescaped pipes only."""
    return re.split(r"(?<!\\)\|", row.strip())[1:-1]


def test_markdown_escapes_user_text_and_warns_on_random_weights(run_a):
    r = _hostile(_result(run_a))
    r.random_weights = True
    r.model("leaky").random_weights = True
    r.model("leaky").random_weights_parts = ["backbone leaky"]
    text = render_markdown(r)
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "\\`d\\`" in text and "\\*\\*x\\*\\*" in text and "\\$y\\$" in text and "&amp;amp;" in text
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", text)
    assert re.search(r"^> \*\*RANDOM WEIGHTS: .*backbone leaky", text, re.MULTILINE)
    tables = [line for line in text.splitlines() if line.startswith("|")]
    header_cells = {len(_cells(line)) for line in tables if line.startswith(("| ---", "| Model"))}
    flagged_rows = [line for line in tables if "leaky @ clip" in line]
    assert len(flagged_rows) == 2 and all(len(_cells(line)) == 8 for line in flagged_rows)
    assert header_cells == {8}


def test_markdown_appends_to_github_step_summary(run_a, tmp_path, monkeypatch):
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n", encoding="utf-8")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    [path] = MarkdownReporter().write(_result(run_a), tmp_path / "out", "markdown")
    written = path.read_text(encoding="utf-8")
    assert summary.read_text(encoding="utf-8") == "earlier step\n" + written
    MarkdownReporter().write(_result(run_a), tmp_path / "out", "markdown")
    assert summary.read_text(encoding="utf-8").count("## sing-audit") == 2
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))  # a folder: warn, never fail the audit
    MarkdownReporter().write(_result(run_a), tmp_path / "out", "markdown")


# --------------------------------------------------------------------------- sing-audit report


def test_report_rerenders_from_results_json_alone(run_a, tmp_path, monkeypatch, capsys):
    import sing_audit.pipeline.cache
    import sing_audit.pipeline.sources

    run = tmp_path / "copy"
    shutil.copytree(run_a, run)
    shutil.rmtree(run / "cache")
    for name in ("report.html", "classes.csv", "junit.xml", "summary.md"):
        (run / name).unlink()
    before = (run / "results.json").read_bytes()

    def forbidden(*a, **k):
        raise AssertionError("report must not load models, data or the cache")

    monkeypatch.setattr(sing_audit.pipeline.sources.Sources, "__init__", forbidden)
    monkeypatch.setattr(sing_audit.pipeline.cache.ArrayStore, "load", forbidden)
    assert main(["report", str(run), "--format", "html,json"]) == 0
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "<html" in html and "synthetic" in html and not (run / "classes.csv").exists()
    assert (run / "results.json").read_bytes() == before
    # default: the formats the run recorded (json, csv, html, junit, markdown)
    assert main(["report", str(run / "results.json")]) == 0
    for name in ("classes.csv", "junit.xml", "summary.md"):
        assert (run / name).is_file(), name
    assert ET.parse(run / "junit.xml").getroot().get("failures") == "3"
    assert (run / "results.json").read_bytes() == before
    assert "results.json" in capsys.readouterr().out


def test_report_bad_inputs_exit_2(run_a, tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json", encoding="utf-8")
    assert main(["report", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    future = json.loads((run_a / "results.json").read_text(encoding="utf-8"))
    future["schema_version"] = "2.0"
    (bad / "results.json").write_text(json.dumps(future), encoding="utf-8")
    assert main(["report", str(bad)]) == 2
    assert "schema version 2.0" in capsys.readouterr().err
    before = (run_a / "results.json").read_bytes()
    assert main(["report", str(run_a), "--format", "htm"]) == 2
    err = capsys.readouterr().err
    assert "unknown format 'htm'" in err and '"html"' in err
    assert (run_a / "results.json").read_bytes() == before


# --------------------------------------------------------------------------- sing-audit diff


def _diff_json(capsys, *args) -> tuple[int, dict]:
    code = main(["diff", *map(str, args), "--json"])
    return code, json.loads(capsys.readouterr().out)


def _classes(items) -> set[tuple[str, str]]:
    return {(c["model_b"], c["name"]) for c in items}


def test_diff_finds_the_regressed_classes(run_a, run_b, capsys):
    code, d = _diff_json(capsys, run_a, run_b)
    assert code == 1 and d["regressed"] is True
    assert _classes(d["regressions"]) == {("leaky", name) for name in PLANTED}
    assert d["improvements"] == [] and d["newly_flagged"] == [] and d["unmatched"] == []
    for c in d["regressions"]:
        assert c["as_abs_ci_b"]["low"] > c["as_abs_ci_a"]["high"] and c["n_b"] >= d["min_images"]
    leaky = next(m for m in d["models"] if m["model_b"] == "leaky")
    assert leaky["regressions"] == 2 and leaky["null_dim"] == {"a": 54, "b": 54, "delta": 0, "beyond_ci": None}
    assert main(["diff", str(run_a), str(run_b)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSIONS (2)" in out and "sports car" in out and "REGRESSION:" in out
    assert "flagged of judged" in out and leaky["n_judged"]["b"] == 10


def test_diff_shows_a_model_that_is_no_longer_assessed(run_a, tmp_path, capsys):
    data = json.loads((run_a / "results.json").read_text(encoding="utf-8"))
    for m in data["models"]:
        m.update(assessed=False, passed=False, n_judged=0, not_assessed_reasons=["0 of 10 classes have ≥ 100 images"])
    (tmp_path / "results.json").write_text(json.dumps(data), encoding="utf-8")
    code, d = _diff_json(capsys, run_a, tmp_path)
    assert all(m["assessed_a"] and not m["assessed_b"] for m in d["models"])
    main(["diff", str(run_a), str(tmp_path)])
    assert "→ not assessed" in capsys.readouterr().out


def test_diff_of_identical_runs_passes(run_a, capsys):
    code, d = _diff_json(capsys, run_a, run_a)
    assert code == 0 and d["regressed"] is False
    assert d["regressions"] == d["improvements"] == d["newly_flagged"] == []
    assert main(["diff", str(run_a), str(run_a)]) == 0
    assert "OK: no class regressed" in capsys.readouterr().out


def test_diff_newly_flagged_class_and_min_images(run_a, tmp_path, capsys):
    data = json.loads((run_a / "results.json").read_text(encoding="utf-8"))
    benign = next(m for m in data["models"] if m["name"] == "benign")
    tench, goldfish = benign["classes"][0], benign["classes"][1]
    tench.update(as_abs_mean=9.0, as_abs_ci={"low": 8.0, "high": 10.0}, flagged=True, flag_reasons=["planted"])
    goldfish.update(as_abs_mean=9.0, as_abs_ci={"low": 8.0, "high": 10.0}, n=5)  # too few images to count
    b = tmp_path / "b"
    b.mkdir()
    (b / "results.json").write_text(json.dumps(data), encoding="utf-8")
    code, d = _diff_json(capsys, run_a, b)
    assert code == 1
    assert _classes(d["regressions"]) == {("benign", "tench")}
    assert _classes(d["newly_flagged"]) == {("benign", "tench")}
    # the mirror: B → A is an improvement and no longer flagged, not a regression
    code, d = _diff_json(capsys, b, run_a)
    assert code == 0 and _classes(d["improvements"]) == {("benign", "tench")}
    assert _classes(d["no_longer_flagged"]) == {("benign", "tench")}
    # --min-delta: growth smaller than DEG is not counted
    assert main(["diff", str(run_a), str(b), "--min-delta", "10"]) == 0


def test_diff_explicit_model_pairs(run_a, capsys):
    code, d = _diff_json(capsys, run_a, run_a, "--model", "benign=leaky")
    assert code == 1
    assert _classes(d["regressions"]) == {("leaky", name) for name in PLANTED}
    assert {(u["side"], u["name"]) for u in d["unmatched"]} == {("a", "leaky"), ("b", "benign")}
    code, d = _diff_json(capsys, run_a, run_a, "--model", "leaky@clip=benign")
    assert code == 0 and _classes(d["improvements"]) == {("benign", name) for name in PLANTED}


def test_diff_bad_inputs_exit_2(run_a, tmp_path, capsys):
    assert main(["diff", str(run_a), str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    data = json.loads((run_a / "results.json").read_text(encoding="utf-8"))
    for m in data["models"]:
        m["name"] = "resnet-" + m["name"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps(data), encoding="utf-8")
    assert main(["diff", str(run_a), str(other)]) == 2
    err = capsys.readouterr().err
    assert "no model in common" in err and "benign@clip" in err and "resnet-leaky@clip" in err
    assert main(["diff", str(run_a), str(other), "--model", "leaky=nope"]) == 2
    assert "resnet-leaky@clip" in capsys.readouterr().err
    assert main(["diff", str(run_a), str(other), "--model", "leaky"]) == 2
    assert main(["diff", str(run_a), str(other), "--model", "leaky=resnet-leaky"]) == 0


def test_diff_results_is_pure_and_typed(run_a):
    a, path, text = load_result(run_a)
    assert path.read_text(encoding="utf-8") == text
    d = diff_results(a, a)
    assert not d.regressed and len(d.models) == 2
    assert json.loads(d.model_dump_json())["models"][0]["n_flagged"]["delta"] == 0
