"""The ``wandb`` reporter against a real W&B in offline mode (no API key, no network):
the offline run it writes is read back from W&B's transaction log and compared with
results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

wandb = pytest.importorskip("wandb")

from sing_audit.cli import main  # noqa: E402
from sing_audit.integrations.wandb_reporter import OfflineRunError, read_offline_run  # noqa: E402
from sing_audit.results import AuditResult  # noqa: E402

from .conftest import demo_config  # noqa: E402

SECRET = "sentinel-wandb-key-0123456789abcdef0123456789abcdef"  # 40+ chars, like a real key


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["WANDB_MODE"] = "offline"
    return env


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "offline")


def _config(tmp: Path, formats=("json", "html", "wandb"), options=None, **overrides) -> Path:
    report = {"formats": list(formats), "options": {"wandb": options} if options is not None else {}}
    return demo_config(tmp, report, **overrides)


def _result(run: Path) -> AuditResult:
    return AuditResult.model_validate_json((run / "results.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """The demo with report.formats [json, html, pdf, wandb], through the command line,
    from a working folder of its own (nothing of W&B's may land there)."""
    tmp = tmp_path_factory.mktemp("wandb_run")
    work = tmp / "work"
    work.mkdir()
    options = {"project": "audits", "run_name": "demo-1", "tags": ["vision"], "group": "nightly"}
    cfg = _config(tmp, formats=("json", "html", "pdf", "wandb"), options=options)
    env = {**_clean_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "sing_audit", "run", str(cfg)], capture_output=True, text=True,
                          env=env, cwd=work)
    assert proc.returncode == 1, proc.stderr  # the demo's planted leakage
    run = tmp / "run"
    record = json.loads((run / "wandb.json").read_text(encoding="utf-8"))
    return tmp, proc, record, read_offline_run(run / record["run_dir"])


def test_one_offline_run_in_the_run_folder(logged):
    tmp, _, record, offline = logged
    assert record["project"] == offline.project == "audits"
    assert record["mode"] == "offline" and record["run_id"] == offline.run_id
    assert record["run_name"] == offline.name == "demo-1" and offline.group == "nightly"
    assert record["run_dir"] == f"wandb/offline-run-{record['run_dir'].split('offline-run-')[1]}"
    assert record["run_dir"].endswith(record["run_id"])
    assert offline.finished and offline.exit_code == 0
    assert json.loads((tmp / "run" / "results.json").read_text())["files"]["wandb"] == "wandb.json"
    assert list((tmp / "work").iterdir()) == []  # W&B wrote nothing into the working folder
    assert not list((tmp / "run" / "wandb").glob("*/offline-run-*"))  # one level: <dir>/wandb/offline-run-*


def test_the_summary_holds_the_numbers_of_results_json(logged):
    tmp, _, record, offline = logged
    result, s = _result(tmp / "run"), offline.summary
    assert record["metric_prefixes"] == {"benign/clip": {"model": "benign", "target": "clip"},
                                         "leaky/clip": {"model": "leaky", "target": "clip"}}
    for m in result.models:
        p = f"{m.name}/{m.target}/"
        assert s[p + "is_mean"] == pytest.approx(m.is_mean, rel=1e-12)
        assert s[p + "as_abs_mean"] == pytest.approx(m.as_abs_mean, rel=1e-12)
        assert s[p + "is_as_ratio"] == pytest.approx(m.is_as_ratio, rel=1e-12)
        assert s[p + "is_as_ratio_low"] == pytest.approx(m.is_as_ratio_ci.low, rel=1e-12)
        assert s[p + "is_as_ratio_high"] == pytest.approx(m.is_as_ratio_ci.high, rel=1e-12)
        assert s[p + "fidelity_cosine"] == pytest.approx(m.fidelity.cosine, rel=1e-12)
        assert s[p + "fidelity_r2"] == pytest.approx(m.fidelity.r2, rel=1e-12)
        assert (s[p + "n_flagged"], s[p + "n_judged"], s[p + "n_not_judged"]) == (m.n_flagged, m.n_judged, 0)
        assert s[p + "weights_digest"] == m.weights_digest and m.weights_digest.startswith("sha256:")
        assert s[p + "outcome"] == m.outcome and s[p + "random_weights"] is False
    assert s["leaky/clip/n_flagged"] == 2
    assert (s["models"], s["models_flagged"], s["models_failed"], s["models_not_assessed"]) == (2, 1, 1, 0)


def test_verdict_provenance_and_config(logged):
    tmp, _, _, offline = logged
    result, s = _result(tmp / "run"), offline.summary
    assert s["outcome"] == result.outcome == "failed" and "failed" in offline.tags
    assert offline.tags == ["vision", "sing-audit", "failed"]
    assert s["verdict"] == offline.notes == result.verdict
    assert s["sing_audit_version"] == result.provenance.versions["sing-audit"]
    assert s["config_digest"] == result.provenance.config_digest and s["random_weights"] is False
    assert offline.config == json.loads(json.dumps(result.provenance.config))
    assert offline.config["policy"]["as_threshold"] == 4.0
    assert offline.config["report"]["options"]["wandb"]["project"] == "audits"


def test_the_artifact_holds_the_files_the_run_wrote(logged):
    tmp, _, record, offline = logged
    [artifact] = offline.artifacts
    assert artifact["type"] == "audit" and artifact["name"] == record["artifact"] == "audit-synthetic-demo"
    files = artifact["files"]
    assert sorted(files) == sorted(record["artifact_files"]) == ["report.html", "report.pdf", "results.json"]
    run = (tmp / "run").resolve()
    for name, entry in files.items():
        staged = Path(entry["local_path"])
        assert staged.is_relative_to(run / "wandb" / "data")  # staged for `wandb sync` inside the run folder
        if name != "results.json":
            assert staged.read_bytes() == (run / name).read_bytes()
    sent = json.loads(Path(files["results.json"]["local_path"]).read_text(encoding="utf-8"))
    local = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert local["files"].pop("wandb") == "wandb.json"  # rewritten after the publisher only to name wandb.json
    assert sent == local


def test_the_terminal_stays_clean(logged):
    tmp, proc, _, _ = logged
    assert proc.stderr.strip() == "" or "wandb" not in proc.stderr.lower()
    for line in (proc.stdout + proc.stderr).splitlines():
        assert not line.lower().startswith("wandb:") and "W&B" not in line
    assert "wandb.json" in proc.stdout  # named among the files written
    assert "wandb: logged run" in (tmp / "run" / "logs" / "run.log").read_text(encoding="utf-8")


def test_report_logs_a_finished_run_folder_and_never_writes_the_key(logged, monkeypatch):
    tmp, _, first, before_run = logged
    monkeypatch.setenv("WANDB_API_KEY", SECRET)  # W&B's own variable; offline, it is never used
    before = (tmp / "run" / "results.json").read_bytes()
    assert main(["-q", "report", str(tmp / "run"), "-f", "wandb"]) == 0
    assert (tmp / "run" / "results.json").read_bytes() == before
    record = json.loads((tmp / "run" / "wandb.json").read_text(encoding="utf-8"))
    assert record["run_id"] != first["run_id"] and record["project"] == "audits"
    again = read_offline_run(tmp / "run" / record["run_dir"])
    assert again.summary["leaky/clip/is_mean"] == before_run.summary["leaky/clip/is_mean"]
    sent = Path(again.artifacts[0]["files"]["results.json"]["local_path"])
    assert sent.read_bytes() == before  # byte for byte the local results.json
    for path in (tmp / "run").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_model_not_assessed_and_the_environment_s_project(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    cfg = _config(tmp_path, formats=("json", "wandb"), options={"dir": str(tmp_path / "wb")},
                  policy={"min_images": 1000})
    assert main(["-q", "run", str(cfg)]) == 1  # nothing judged: not assessed
    record = json.loads((tmp_path / "run" / "wandb.json").read_text(encoding="utf-8"))
    assert record["project"] == "from-env" and record["run_name"] == "synthetic-demo"
    assert Path(record["run_dir"]).is_relative_to(tmp_path / "wb" / "wandb")  # the named dir, absolute
    assert not (tmp_path / "run" / "wandb").exists()
    offline = read_offline_run(record["run_dir"])
    s = offline.summary
    assert s["outcome"] == "not assessed" and "not assessed" in offline.tags
    assert (s["leaky/clip/n_judged"], s["leaky/clip/n_not_judged"], s["leaky/clip/n_flagged"]) == (0, 10, 0)
    assert s["models_not_assessed"] == 2 and s["models_failed"] == 0
    assert list(offline.artifacts[0]["files"]) == ["results.json"]
    assert "WANDB_DATA_DIR" not in os.environ and "WANDB_CACHE_DIR" not in os.environ  # put back


def test_a_run_that_cannot_start_is_exit_2_with_results_in_place(tmp_path, capsys):
    (tmp_path / "blocked").write_text("a file, not a folder")
    cfg = _config(tmp_path, formats=("json", "wandb"), options={"project": "p", "dir": str(tmp_path / "blocked")})
    assert main(["-q", "run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "could not" in err and "--format wandb" in err and "Traceback" not in err
    assert (tmp_path / "run" / "results.json").is_file() and not (tmp_path / "run" / "wandb.json").exists()


def test_a_logging_failure_finishes_the_run_and_exits_2(tmp_path, monkeypatch, capsys):
    def refuse(self, *args, **kwargs):  # a fault injected into W&B's real Artifact
        raise OSError("disk full")

    monkeypatch.setattr(wandb.Artifact, "add_file", refuse)
    cfg = _config(tmp_path, formats=("json", "wandb"), options={"project": "p"})
    assert main(["-q", "run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "could not log the audit to W&B" in err and "disk full" in err
    assert (tmp_path / "run" / "results.json").is_file() and not (tmp_path / "run" / "wandb.json").exists()
    [folder] = (tmp_path / "run" / "wandb").glob("offline-run-*")
    offline = read_offline_run(folder)
    assert offline.finished and offline.exit_code == 1  # run.finish() ran, marked failed
    assert offline.summary["outcome"] == "failed"


@pytest.mark.parametrize("command", ["validate", "run"])
def test_without_the_library_the_extra_is_named(tmp_path, monkeypatch, capsys, command):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    cfg = _config(tmp_path, options={"project": "p"})
    assert main([command, str(cfg)]) == 2
    assert "pip install 'sing-audit[wandb]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "options, message",
    [
        ({}, "no W&B project: set project"),
        ({"project": "p", "projct": "q"}, "projct"),
        ({"project": "p", "mode": "cloud"}, "mode"),
        ({"project": "a/b"}, "W&B allows no /"),
        ({"project": "p", "tags": ["x" * 65]}, "1 to 64 characters"),
        ({"project": "p", "api_key": SECRET}, "api_key"),
    ],
)
def test_bad_options_are_config_errors(tmp_path, capsys, options, message):
    cfg = _config(tmp_path, options=options)
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and "report.options.wandb" in err
    assert SECRET not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "wandb").exists()


def test_the_environment_s_project_satisfies_validate(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    assert main(["-q", "validate", str(_config(tmp_path, options={}))]) == 0


def test_online_without_credentials_is_refused_without_a_prompt(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no key in any .netrc either
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    cfg = _config(tmp_path, formats=("json", "wandb"), options={"project": "p", "mode": "online"})
    assert main(["-q", "run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "no W&B credentials: set WANDB_API_KEY" in err and "WANDB_MODE=offline" in err
    assert (tmp_path / "run" / "results.json").is_file() and not (tmp_path / "run" / "wandb.json").exists()


def test_a_damaged_transaction_log_is_refused(logged, tmp_path):
    tmp, _, record, _ = logged
    [log_file] = (tmp / "run" / record["run_dir"]).glob("run-*.wandb")
    data = bytearray(log_file.read_bytes())
    data[200] ^= 0xFF
    (tmp_path / "run-x.wandb").write_bytes(bytes(data))
    with pytest.raises(OfflineRunError, match="damaged record"):
        read_offline_run(tmp_path)
    (tmp_path / "run-x.wandb").write_bytes(b"not a log")
    with pytest.raises(OfflineRunError, match="not a W&B transaction log"):
        read_offline_run(tmp_path / "run-x.wandb")
