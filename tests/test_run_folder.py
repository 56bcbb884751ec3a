"""The output folder: nothing finished is lost, nothing stale is shown, one run at a time.

- results.json first; a failing later writer says what is in place and how to regenerate it;
- ``--force`` replaces the previous audit's outputs (its manifest), never a user's file;
- a run that fails before measuring anything does not claim the folder;
- a second run on a folder in use exits 2 naming the holder (or waits with ``--wait``),
  and a lock left by a killed run is taken over;
- names of any length make bounded, distinct path components.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sing_audit.cli import main
from sing_audit.errors import OutputFolderError, OutputWriteError
from sing_audit.pipeline.run_folder import MARKER, RunFolder
from sing_audit.store import SLUG_MAX, slug

from .conftest import write_config


def _run(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sing_audit", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- --force and stale outputs


def test_force_replaces_the_previous_audits_outputs_but_not_a_users_files(synthetic_config, tmp_path, scenario_dir):
    out = tmp_path / "out"
    first = synthetic_config(report={"formats": ["json", "csv", "junit", "markdown"]})
    assert main(["run", str(first)]) == 1
    for name in ("junit.xml", "summary.md", "classes.csv", "models/leaky__clip/images.csv"):
        assert (out / name).is_file(), name
    (out / "notes.txt").write_text("my review notes", encoding="utf-8")
    cache_entries = sorted(p.name for p in (out / "cache").rglob("meta.json"))

    # another audit: only the benign backbone, under another name, json only
    data = {
        "output": str(out),
        "target": {"plugin": "precomputed", "name": "clip", "path": str(scenario_dir / "clip.npz")},
        "backbones": [{"name": "only", "plugin": "precomputed", "path": str(scenario_dir / "benign.npz")}],
        "report": {"formats": ["json"]},
        "run": {"bootstrap": 200},
    }
    second = write_config(tmp_path, data, name="other.yaml")
    assert main(["run", str(second)]) == 2  # another audit: refused without --force
    assert (out / "junit.xml").is_file()
    assert main(["run", str(second), "--force"]) == 0
    for name in ("junit.xml", "summary.md", "classes.csv", "models/leaky__clip/images.csv", "models/benign__clip/images.csv"):
        assert not (out / name).exists(), f"{name} of the previous audit survived --force"
    assert not (out / "models" / "leaky__clip").exists()
    assert (out / "models" / "only__clip" / "images.csv").is_file()
    assert (out / "notes.txt").read_text(encoding="utf-8") == "my review notes"
    assert [m["name"] for m in _results(out)["models"]] == ["only"]
    # the content-keyed cache is kept (its entries are valid whatever audit reads them)
    assert set(cache_entries) <= {p.name for p in (out / "cache").rglob("meta.json")}
    manifest = json.loads((out / MARKER).read_text())["outputs"]
    assert "results.json" in manifest and "notes.txt" not in manifest and "junit.xml" not in manifest


def test_a_rerun_removes_outputs_it_no_longer_writes(synthetic_config, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(synthetic_config(report={"formats": ["json", "junit", "markdown"]}))]) == 1
    assert (out / "junit.xml").is_file() and (out / "summary.md").is_file()
    # same audit (same inputs), other report formats and policy: the old junit.xml would be stale
    assert main(["run", str(synthetic_config(report={"formats": ["json", "markdown"]}, policy={"max_flagged": 5}))]) == 0
    assert not (out / "junit.xml").exists()
    assert "PASS" in (out / "summary.md").read_text(encoding="utf-8").splitlines()[0]


def test_a_run_that_fails_before_measuring_does_not_claim_the_folder(synthetic_config, tmp_path, scenario_dir):
    out = tmp_path / "out"
    broken = synthetic_config(backbones=[{"name": "leaky", "plugin": "precomputed", "path": str(tmp_path / "missing.npz")}])
    assert main(["run", str(broken)]) == 2
    assert not (out / MARKER).exists() and not (out / "results.json").exists()
    assert "missing.npz" in (out / "logs" / "run.log").read_text(encoding="utf-8")
    fixed = synthetic_config(backbones=[{"name": "leaky", "plugin": "precomputed", "path": str(scenario_dir / "leaky.npz")}])
    assert main(["run", str(fixed)]) == 1  # no --force needed
    assert (out / MARKER).is_file() and _results(out)["models"][0]["name"] == "leaky"


def test_weights_error_before_extraction_does_not_claim_the_folder(tmp_path):
    from .conftest import image_folder_audit

    cfg = image_folder_audit(tmp_path, [{"name": "r18", "plugin": "timm", "model": "resnet18", "weights": "nowhere.safetensors"}])
    proc = _run("run", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert "nowhere.safetensors" in proc.stderr
    assert not any(cfg.parent.rglob(MARKER))


# --------------------------------------------------------------------------- results.json first


def test_a_failing_writer_leaves_results_json_and_the_other_outputs_in_place(synthetic_config, tmp_path, monkeypatch, capsys):
    from sing_audit.builtins.reporters import HtmlReporter
    from sing_audit.report import ReportRenderError

    def broken(self, result, output_dir, fmt):
        raise ReportRenderError("Pango is missing")

    monkeypatch.setattr(HtmlReporter, "write", broken)
    out = tmp_path / "out"
    cfg = synthetic_config(report={"formats": ["json", "html", "junit", "markdown"]})
    assert main(["run", str(cfg)]) == 2
    captured = capsys.readouterr()
    assert "FAILED: leaky (clip)" in captured.out  # the verdict is still shown
    assert "html (reporter 'html'" in captured.err and "Pango is missing" in captured.err
    assert "results.json and the other outputs" in captured.err and "junit.xml" in captured.err
    assert f"sing-audit report {out} --format html" in captured.err
    res = _results(out)
    assert res["files"]["junit"] == "junit.xml" and "html" not in res["files"]
    assert (out / "junit.xml").is_file() and (out / "summary.md").is_file() and not (out / "report.html").exists()

    monkeypatch.undo()
    assert main(["report", str(out), "--format", "html"]) == 0
    assert (out / "report.html").is_file()


def test_a_writer_bug_exits_70_and_the_log_holds_its_traceback(synthetic_config, tmp_path, monkeypatch, capsys):
    from sing_audit.builtins.ci_reporters import JUnitReporter

    def buggy(self, result, output_dir, fmt):
        raise ZeroDivisionError("oops in a reporter")

    monkeypatch.setattr(JUnitReporter, "write", buggy)
    out = tmp_path / "out"
    assert main(["run", str(synthetic_config(report={"formats": ["json", "junit", "markdown"]}))]) == 70
    err = capsys.readouterr().err
    assert "ZeroDivisionError: oops in a reporter" in err and str(out / "logs" / "run.log") in err
    assert (out / "results.json").is_file() and (out / "summary.md").is_file()
    log_text = (out / "logs" / "run.log").read_text(encoding="utf-8")
    assert "Traceback" in log_text and "oops in a reporter" in log_text


def test_an_internal_error_is_logged_with_its_traceback(synthetic_config, tmp_path, monkeypatch, capsys):
    from sing_audit.pipeline import audit

    def explode(*a, **k):
        raise RuntimeError("a bug in the analysis")

    monkeypatch.setattr(audit, "analyse_model", explode)
    out = tmp_path / "out"
    assert main(["run", str(synthetic_config())]) == 70
    err = capsys.readouterr().err
    assert f"The log is at {out / 'logs' / 'run.log'}" in err
    log_text = (out / "logs" / "run.log").read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in log_text and "RuntimeError: a bug in the analysis" in log_text


def test_output_write_error_carries_the_result(synthetic_config, tmp_path, monkeypatch):
    from sing_audit.builtins.ci_reporters import MarkdownReporter
    from sing_audit.pipeline import run_audit

    monkeypatch.setattr(MarkdownReporter, "write", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OutputWriteError) as info:
        run_audit(synthetic_config(report={"formats": ["json", "markdown"]}))
    err = info.value
    assert err.is_bug and [f.format for f in err.failures] == ["markdown"]
    assert err.result.verdict.startswith("FAILED") and "results.json" in err.written


# --------------------------------------------------------------------------- one run at a time


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sing_audit.pipeline.run_folder import RunFolder
    with RunFolder(Path(sys.argv[1]), "someone-else's audit", force=True):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _hold(out: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_a_folder_in_use_exits_2_naming_the_holder(synthetic_config, tmp_path):
    out = tmp_path / "out"
    cfg = synthetic_config(report={"formats": ["json"]})
    holder = _hold(out, 60)
    try:
        proc = _run("run", str(cfg))
        assert proc.returncode == 2, proc.stderr
        assert f"output folder {out} is in use by pid {holder.pid}" in proc.stderr
        assert "--wait" in proc.stderr
        assert not (out / "results.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_wait_queues_behind_the_holder(synthetic_config, tmp_path):
    out = tmp_path / "out"
    cfg = synthetic_config(report={"formats": ["json"]})
    holder = _hold(out, 3)
    try:
        start = time.monotonic()
        proc = _run("run", str(cfg), "--wait", "--force")
        assert proc.returncode == 1, proc.stderr
        assert time.monotonic() - start >= 2.0
        assert "is in use by" in proc.stderr and "waiting" in proc.stderr
    finally:
        holder.wait()
    holder = _hold(out, 60)
    try:
        proc = _run("run", str(cfg), "--wait", "1")
        assert proc.returncode == 2 and "(waited 1 s)" in proc.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(synthetic_config, tmp_path):
    out = tmp_path / "out"
    holder = _hold(out, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert any((out / ".sing-audit" / "holders").glob("*.json"))  # the killed run's record is left behind
    assert main(["run", str(synthetic_config(report={"formats": ["json"]})), "--force"]) == 1
    assert f"took over from pid {holder.pid}" in (out / "logs" / "run.log").read_text(encoding="utf-8")
    assert not any((out / ".sing-audit" / "holders").glob("*.json"))


def test_two_real_runs_at_once_one_waits_for_nothing_and_refuses(synthetic_config, tmp_path):
    """Two `sing-audit run` started together: one runs, the other exits 2 (never 70)."""
    cfg = synthetic_config(report={"formats": ["json"]}, run={"bootstrap": 5000})
    procs = [subprocess.Popen([sys.executable, "-m", "sing_audit", "run", str(cfg)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = sorted(p.wait(timeout=300) for p in procs)
    errs = "".join(p.stderr.read() for p in procs)
    assert codes in ([1, 1], [1, 2]), errs  # both succeeded one after the other, or one was refused
    assert "internal error" not in errs
    if codes == [1, 2]:
        assert "is in use by pid" in errs
    assert _results(tmp_path / "out")["verdict"].startswith("FAILED")


def test_shards_share_the_folder_but_a_run_does_not(tmp_path):
    out = tmp_path / "out"
    with RunFolder(out, "audit", shared=True), RunFolder(out, "audit", shared=True):
        with pytest.raises(OutputFolderError, match="is in use by pid"):
            RunFolder(out, "audit").open()
    with RunFolder(out, "audit"):
        with pytest.raises(OutputFolderError, match="is in use by pid"):
            RunFolder(out, "audit", shared=True).open()


# --------------------------------------------------------------------------- names as path components


def test_slug_is_bounded_and_distinct():
    long_a, long_b = "a" * 240, "a" * 239 + "b"
    for text in (long_a, long_b, "x" * 5000, "ünïcödé" * 40, "a/b", "..", "ResNet", "resnet"):
        s = slug(text)
        assert 0 < len(s) <= SLUG_MAX and len(s.encode()) <= SLUG_MAX
        assert "/" not in s and s not in (".", "..")
    assert slug(long_a) != slug(long_b)
    assert slug("a/b") != slug("a_b") and slug("ResNet") != slug("resnet")
    assert slug("leaky") == "leaky" and slug("resnet50.a1_in1k") == "resnet50.a1_in1k"


def test_names_of_240_characters_finish_the_audit(tmp_path, scenario_dir):
    name_a, name_b = "b" * 240, "b" * 239 + "c"
    cfg = write_config(
        tmp_path,
        {
            "output": "out",
            "target": {"plugin": "precomputed", "name": "t" * 240, "path": str(scenario_dir / "clip.npz")},
            "backbones": [
                {"name": name_a, "plugin": "precomputed", "path": str(scenario_dir / "benign.npz")},
                {"name": name_b, "plugin": "precomputed", "path": str(scenario_dir / "leaky.npz")},
            ],
            "report": {"formats": ["json", "csv", "html", "junit", "markdown"]},
            "run": {"bootstrap": 200},
        },
    )
    assert main(["run", str(cfg)]) == 1
    res = _results(tmp_path / "out")
    files = [m["files"]["images_csv"] for m in res["models"]]
    assert len(set(files)) == 2
    for rel in files:
        assert (tmp_path / "out" / rel).is_file()
        assert all(len(part) <= 2 * SLUG_MAX + 2 for part in Path(rel).parts)
    assert [m["name"] for m in res["models"]] == [name_a, name_b]
