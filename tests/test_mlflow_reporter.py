"""The ``mlflow`` reporter against a real MLflow (a local SQLite store, artifacts in tmp):
what the run logs is read back with MLflow's own client and compared with results.json."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.utils.validation import path_not_unique, validate_param_and_metric_name  # noqa: E402

from sing_audit.cli import main  # noqa: E402
from sing_audit.integrations.mlflow_reporter import (  # noqa: E402
    MAX_PARAM_VALUE_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    flatten_config,
    metric_key_prefixes,
    public_uri,
)
from sing_audit.results import AuditResult  # noqa: E402

from .conftest import demo_config  # noqa: E402

LONG_NOTE = "n" * 9000  # over MLflow's 6000 characters of a param and 8000 of a tag


@pytest.fixture(autouse=True)
def _no_tracking_uri_from_outside(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _config(tmp: Path, formats=("json", "html", "mlflow"), options=None, **overrides) -> Path:
    report = {"formats": list(formats), "options": {"mlflow": options} if options is not None else {}}
    return demo_config(tmp, report, **overrides)


def _store(tmp: Path) -> dict:
    return {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "artifact_location": str(tmp / "artifacts")}


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env.update({"PYTHONPATH": str(Path(__file__).resolve().parents[1]), **(env or {})})
    return subprocess.run([sys.executable, "-m", "sing_audit", *args], capture_output=True, text=True, env=full_env)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """The demo run with report.formats [json, html, pdf, mlflow], through the command line."""
    tmp = tmp_path_factory.mktemp("mlflow_run")
    options = {**_store(tmp), "experiment": "audits", "run_name": "demo-1", "tags": {"team": "vision", "note": LONG_NOTE}}
    cfg = _config(tmp, formats=("json", "html", "pdf", "mlflow"), options=options)
    proc = _cli("run", str(cfg))
    assert proc.returncode == 1, proc.stderr  # the demo's planted leakage
    client = MlflowClient(tracking_uri=options["tracking_uri"])
    record = json.loads((tmp / "run" / "mlflow.json").read_text(encoding="utf-8"))
    return tmp, proc, client, client.get_run(record["run_id"]), record


def test_one_run_per_audit_in_the_named_experiment(logged):
    tmp, _, client, run, record = logged
    experiment = client.get_experiment_by_name("audits")
    assert record["experiment_id"] == experiment.experiment_id == run.info.experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run.info.run_id]
    assert run.info.run_name == record["run_name"] == "demo-1"
    assert run.info.status == "FINISHED"
    assert record["tracking_uri"] == f"sqlite:///{tmp / 'mlflow.db'}"
    assert experiment.artifact_location.endswith(str(tmp / "artifacts"))
    results = json.loads((tmp / "run" / "results.json").read_text(encoding="utf-8"))
    assert results["files"]["mlflow"] == "mlflow.json"  # results.json names the record


def test_metrics_equal_the_numbers_of_results_json(logged):
    tmp, _, _, run, record = logged
    result = AuditResult.model_validate_json((tmp / "run" / "results.json").read_text(encoding="utf-8"))
    metrics = run.data.metrics
    assert record["metric_prefixes"] == {"benign/clip": {"model": "benign", "target": "clip"},
                                         "leaky/clip": {"model": "leaky", "target": "clip"}}
    for m in result.models:
        p = f"{m.name}/{m.target}/"
        assert metrics[p + "is_mean"] == pytest.approx(m.is_mean, rel=1e-12)
        assert metrics[p + "as_abs_mean"] == pytest.approx(m.as_abs_mean, rel=1e-12)
        assert metrics[p + "is_as_ratio"] == pytest.approx(m.is_as_ratio, rel=1e-12)
        assert metrics[p + "is_as_ratio_low"] == pytest.approx(m.is_as_ratio_ci.low, rel=1e-12)
        assert metrics[p + "is_as_ratio_high"] == pytest.approx(m.is_as_ratio_ci.high, rel=1e-12)
        assert metrics[p + "fidelity_cosine"] == pytest.approx(m.fidelity.cosine, rel=1e-12)
        assert metrics[p + "fidelity_r2"] == pytest.approx(m.fidelity.r2, rel=1e-12)
        assert metrics[p + "n_flagged"] == m.n_flagged
        assert metrics[p + "n_judged"] == m.n_judged == 10
        assert metrics[p + "n_not_judged"] == 0
    assert metrics["leaky/clip/n_flagged"] == 2
    assert (metrics["models"], metrics["models_flagged"], metrics["models_failed"], metrics["models_not_assessed"]) == (2, 1, 1, 0)


def test_tags_carry_the_verdict_digests_and_versions(logged):
    tmp, _, _, run, _ = logged
    result = AuditResult.model_validate_json((tmp / "run" / "results.json").read_text(encoding="utf-8"))
    tags = run.data.tags
    assert tags["sing_audit.outcome"] == "failed"
    assert tags["sing_audit.random_weights"] == "false"
    assert tags["sing_audit.version"] == result.provenance.versions["sing-audit"]
    assert tags["sing_audit.config_digest"] == result.provenance.config_digest
    for m in result.models:
        assert m.weights_digest and tags[f"{m.name}/{m.target}/weights_digest"] == m.weights_digest
        assert tags[f"{m.name}/{m.target}/outcome"] == m.outcome
    assert tags["mlflow.note.content"] == result.verdict
    assert tags["team"] == "vision"
    assert len(tags["note"]) == MAX_TAG_VALUE_LENGTH and tags["note"].endswith("...[truncated: 9000 chars]")


def test_params_are_the_resolved_config_with_long_values_cut_and_marked(logged):
    tmp, _, _, run, record = logged
    result = AuditResult.model_validate_json((tmp / "run" / "results.json").read_text(encoding="utf-8"))
    params = run.data.params
    config = result.provenance.config
    assert params["name"] == config["name"] == "synthetic-demo"
    assert params["policy.as_threshold"] == "4.0" and params["policy.min_images"] == "10"
    assert params["backbones.1.name"] == "leaky"
    assert json.loads(params["report.formats"]) == ["json", "html", "pdf", "mlflow"]
    assert params["report.options.mlflow.experiment"] == "audits"
    long = params["report.options.mlflow.tags.note"]
    assert len(long) == MAX_PARAM_VALUE_LENGTH and long.endswith("...[truncated: 9000 chars]")
    assert long.startswith("n" * 5000)
    assert record["truncated_params"] == ["report.options.mlflow.tags.note"]
    assert run.data.tags["sing_audit.truncated_params"] == "report.options.mlflow.tags.note"


def test_artifacts_are_the_files_the_run_wrote(logged, tmp_path):
    tmp, _, client, run, record = logged
    names = sorted(a.path for a in client.list_artifacts(run.info.run_id))
    assert names == sorted(record["artifacts"]) == ["report.html", "report.pdf", "results.json"]
    for name in ("report.html", "report.pdf"):
        got = Path(client.download_artifacts(run.info.run_id, name, str(tmp_path)))
        assert got.read_bytes() == (tmp / "run" / name).read_bytes()
    sent = json.loads(Path(client.download_artifacts(run.info.run_id, "results.json", str(tmp_path))).read_text())
    local = json.loads((tmp / "run" / "results.json").read_text(encoding="utf-8"))
    # the run's copy was rewritten after the publisher only to name its mlflow.json
    assert local["files"].pop("mlflow") == "mlflow.json"
    assert sent == local


def test_the_terminal_shows_no_mlflow_log_line(logged):
    tmp, proc, _, _, _ = logged
    shown = proc.stdout + proc.stderr
    assert "Creating initial MLflow database tables" not in shown
    assert "mlflow" not in proc.stderr.lower() and "alembic" not in shown.lower()
    assert "mlflow.json" in proc.stdout  # named among the files written
    assert "Creating initial MLflow database tables" in (tmp / "run" / "logs" / "run.log").read_text(encoding="utf-8")


def test_report_logs_a_finished_run_folder_with_its_recorded_options(logged, tmp_path):
    tmp, _, client, first, _ = logged
    before = (tmp / "run" / "results.json").read_bytes()
    assert main(["-q", "report", str(tmp / "run"), "-f", "mlflow"]) == 0
    assert (tmp / "run" / "results.json").read_bytes() == before  # the record is never rewritten
    record = json.loads((tmp / "run" / "mlflow.json").read_text(encoding="utf-8"))
    assert record["run_id"] != first.info.run_id and record["experiment_id"] == first.info.experiment_id
    sent = Path(client.download_artifacts(record["run_id"], "results.json", str(tmp_path)))
    assert sent.read_bytes() == before  # byte for byte the local results.json
    assert client.get_run(record["run_id"]).data.metrics == first.data.metrics


def test_a_model_not_assessed_and_the_environment_s_tracking_uri(tmp_path, monkeypatch):
    store = _store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["tracking_uri"])
    cfg = _config(tmp_path, formats=("json", "mlflow"), options={"artifact_location": store["artifact_location"]},
                  policy={"min_images": 1000})
    assert main(["-q", "run", str(cfg)]) == 1  # nothing judged: not assessed
    record = json.loads((tmp_path / "run" / "mlflow.json").read_text(encoding="utf-8"))
    run = MlflowClient(store["tracking_uri"]).get_run(record["run_id"])
    assert record["experiment"] == "synthetic-demo" and run.info.run_name == "synthetic-demo"  # the audit's name
    assert run.data.tags["sing_audit.outcome"] == "not assessed"
    assert run.data.tags["leaky/clip/outcome"] == "not assessed"
    m = run.data.metrics
    assert (m["leaky/clip/n_judged"], m["leaky/clip/n_not_judged"], m["leaky/clip/n_flagged"]) == (0, 10, 0)
    assert m["models_not_assessed"] == 2 and m["models_failed"] == 0
    assert [a.path for a in MlflowClient(store["tracking_uri"]).list_artifacts(record["run_id"])] == ["results.json"]


def test_an_unreachable_tracker_fails_the_output_in_seconds(tmp_path, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _config(tmp_path, formats=("json", "mlflow"), options={"tracking_uri": f"http://127.0.0.1:{port}"})
    start = time.monotonic()
    assert main(["-q", "run", str(cfg)]) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert f"could not log the audit to MLflow at http://127.0.0.1:{port}" in err
    assert "sing-audit report" in err and "--format mlflow" in err
    assert "Traceback" not in err  # it is in the run log
    assert (tmp_path / "run" / "results.json").is_file() and not (tmp_path / "run" / "mlflow.json").exists()
    assert "Traceback" in (tmp_path / "run" / "logs" / "run.log").read_text(encoding="utf-8")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # bounded for our calls only


@pytest.mark.parametrize("command", ["validate", "run"])
def test_without_the_library_the_extra_is_named(tmp_path, monkeypatch, capsys, command):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    cfg = _config(tmp_path, options=_store(tmp_path))
    assert main([command, str(cfg)]) == 2
    assert "pip install 'sing-audit[mlflow]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"tracking_uri": "sqlite:///x.db", "experimnt": "a"}, "experimnt"),
        ({}, "no MLflow tracking URI: set tracking_uri"),
        ({"tracking_uri": "https://bob:s3cret@mlflow.example"}, "must not carry credentials"),
        ({"tracking_uri": "https://tok3n@mlflow.example"}, "MLFLOW_TRACKING_USERNAME"),
        ({"tracking_uri": "sqlite:///x.db", "tags": {"a@b": "x"}}, "tag 'a@b'"),
        ({"tracking_uri": "sqlite:///x.db", "tags": {"sing_audit.outcome": "passed"}}, "set by the reporter"),
        ({"tracking_uri": "sqlite:///x.db", "http_retries": -1}, "http_retries"),
    ],
)
def test_bad_options_are_config_errors(tmp_path, capsys, options, message):
    cfg = _config(tmp_path, options=options)
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and "report.options.mlflow" in err
    assert "s3cret" not in err and "tok3n" not in err
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "mlruns").exists()


def test_credentials_in_the_environment_s_uri_are_refused_too(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bob:s3cret@mlflow.example")
    assert main(["run", str(_config(tmp_path, options={}))]) == 2
    err = capsys.readouterr().err
    assert "MLFLOW_TRACKING_URI must not carry credentials" in err and "s3cret" not in err
    assert not (tmp_path / "run").exists()


def test_keys_are_ones_mlflow_accepts():
    class M:
        def __init__(self, name, target):
            self.name, self.target = name, target

    models = [M("vit@b/16", "clip:L"), M("vit@b_16", "clip:L"), M("..", "."), M("a b", "t")]
    prefixes = metric_key_prefixes(models)
    assert prefixes == ["vit_b_16/clip_L", "vit_b_16/clip_L_2", "_../_.", "a b/t"]
    for p in prefixes:
        key = p + "/is_mean"
        assert validate_param_and_metric_name(key) and not path_not_unique(key)
    flat = flatten_config({"a": {"b@c": [1, 2], "d": [{"e": None}], "f": {}}, "g": "x" * 10})
    assert flat == {"a.b_c": "[1, 2]", "a.d.0.e": "null", "a.f": "{}", "g": "x" * 10}


def test_no_uri_is_recorded_with_anything_secret():
    assert public_uri("https://u:p@host:5000/a?token=1#f") == "https://host:5000/a"
    assert public_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    assert public_uri("databricks") == "databricks"
