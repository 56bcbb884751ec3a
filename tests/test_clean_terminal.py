"""What the terminal shows: global flags in either position, no raw log lines, plain
plugin descriptions, the files a run wrote."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from sing_audit.cli import build_parser, main


# --------------------------------------------------------------------------- global flags


@pytest.mark.parametrize("command", [["run", "audit.yaml"], ["merge", "audit.yaml"], ["validate", "audit.yaml"],
                                     ["schema"], ["plugins"], ["report", "out"], ["diff", "a", "b"],
                                     ["explain", "img", "--config", "audit.yaml"]])
def test_global_flags_work_before_and_after_the_command(command):
    parser = build_parser()
    assert parser.parse_args(command).debug is False
    assert parser.parse_args(["--debug", *command]).debug is True
    assert parser.parse_args([command[0], "--debug", *command[1:]]).debug is True
    assert parser.parse_args([*command, "--debug"]).debug is True
    assert parser.parse_args(command).quiet is False
    assert parser.parse_args(["--quiet", *command]).quiet is True
    assert parser.parse_args([command[0], "-q", *command[1:]]).quiet is True


def test_debug_after_the_subcommand_shows_the_traceback(synthetic_config, capsys):
    cfg = synthetic_config(policy={"min_images": 0})
    assert main(["run", "--debug", str(cfg)]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main(["run", str(cfg), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


# --------------------------------------------------------------------------- no raw log lines

_LIBRARY_RUN = """
import logging, sys
from sing_audit.cli import main
from sing_audit.pipeline import sources

if sys.argv[1] == "basicConfig":  # a library configures the root logger at import
    logging.basicConfig(level=logging.INFO)
load_dataset = sources.Sources.load_dataset

def noisy(self, *a, **k):
    # as open_clip does mid-run: logging.warning() on the root logger (an implicit basicConfig)
    logging.warning("No pretrained weights loaded for model 'X'. Model initialized randomly.")
    logging.getLogger("some_library").warning("a library's own logger speaks")
    return load_dataset(self, *a, **k)

sources.Sources.load_dataset = noisy
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("how", ["basicConfig", "implicit"])
def test_no_raw_log_lines_in_the_terminal_whatever_a_library_does(synthetic_config, how):
    cfg = synthetic_config()
    proc = subprocess.run([sys.executable, "-c", _LIBRARY_RUN, how, "run", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    raw = [line for line in (proc.stdout + proc.stderr).splitlines()
           if re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL):", line)]
    assert raw == [], raw
    assert "No pretrained weights" not in proc.stderr
    log = (cfg.parent / "out" / "logs" / "run.log").read_text(encoding="utf-8")
    assert "stage extract" in log or "stage translator" in log
    assert "WARNING root: No pretrained weights loaded for model 'X'" in log
    assert "WARNING some_library: a library's own logger speaks" in log
    assert log.count("verdict:") == 1  # each record once


def test_sing_audit_warnings_still_reach_the_terminal_once(synthetic_config, capsys):
    import logging

    logging.getLogger("sing_audit").warning("a warning of ours")  # outside a command: left to Python
    capsys.readouterr()
    from sing_audit.cli.output import terminal_logging

    with terminal_logging():
        logging.getLogger("sing_audit.report").warning("report section %r failed", "x")
        logging.getLogger("some_library").warning("not for the terminal")
    assert capsys.readouterr().err == "report section 'x' failed\n"
    assert logging.getLogger("sing_audit").propagate  # put back as it was


# --------------------------------------------------------------------------- plugins in plain sentences


def test_first_sentence_is_plain_and_whole():
    from sing_audit.terminal import first_sentence

    doc = """``results.json``: the typed :class:`~sing_audit.results.AuditResult`, written
    before any other output (see :func:`sing_audit.pipeline.write_outputs`). Then `more`.

    A second paragraph."""
    assert first_sentence(doc) == "results.json: the typed AuditResult, written before any other output (see sing_audit.pipeline.write_outputs)."
    assert first_sentence("Ridge, e.g. with α\n    chosen by `loo`") == "Ridge, e.g. with α chosen by loo"
    assert first_sentence(None) == ""


def test_plugins_prints_plain_sentences(capsys, monkeypatch):
    from sing_audit import hookimpl
    from sing_audit.components import Reporter
    from sing_audit.host import create_plugin_manager, create_registry

    class Odd(Reporter):
        """``odd.txt``: a :class:`~sing_audit.results.AuditResult` in one line per model and
        class, sorted. Then a second sentence that is not printed."""
        formats = ("odd",)

    class Plugin:
        @hookimpl
        def register_reporters(self, register):
            register("odd", Odd)

    def registry():
        pm = create_plugin_manager()
        pm.register(Plugin())
        return create_registry(pm)

    monkeypatch.setattr("sing_audit.host.create_registry", registry)
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if line.strip().startswith("odd "))
    assert line.endswith("— odd.txt: a AuditResult in one line per model and class, sorted."), line
    assert "``" not in text and ":class:" not in text and "`" not in text
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert next(r for r in rows if r["name"] == "odd")["doc"] == "odd.txt: a AuditResult in one line per model and class, sorted."
    assert all("``" not in r["doc"] and ":class:" not in r["doc"] for r in rows)


# --------------------------------------------------------------------------- the files a run wrote


def test_last_lines_name_every_file_written(synthetic_config, capsys, monkeypatch):
    from sing_audit import hookimpl
    from sing_audit.components import Reporter
    from sing_audit.host import create_plugin_manager, create_registry
    from sing_audit.store import atomic_write_text

    class Pair(Reporter):
        """pair-a.txt and pair-b.txt: two files of one format."""
        formats = ("pair",)

        def write(self, result, output_dir, fmt):
            paths = [output_dir / "pair-a.txt", output_dir / "pair-b.txt"]
            for path in paths:
                atomic_write_text(path, result.verdict)
            return paths

    class Plugin:
        @hookimpl
        def register_reporters(self, register):
            register("pair", Pair)

    def registry():
        pm = create_plugin_manager()
        pm.register(Plugin())
        return create_registry(pm)

    monkeypatch.setattr("sing_audit.pipeline.audit.create_registry", registry)
    formats = ["json", "csv", "html", "junit", "markdown", "pair"]
    cfg = synthetic_config(report={"formats": formats})
    assert main(["run", str(cfg)]) == 1
    lines = capsys.readouterr().out.splitlines()
    out = cfg.parent / "out"
    manifest = json.loads((out / "audit.json").read_text(encoding="utf-8"))["outputs"]
    assert {"report.html", "pair-a.txt", "pair-b.txt", "junit.xml", "summary.md"} <= set(manifest)
    at = lines.index(f"written to {out}:")
    named = [line.strip() for line in lines[at + 1:-1]]
    assert lines[-1] == "exit 1: the policy failed" and lines[at - 1].startswith("FAILED")
    assert sorted(named) == sorted({*manifest, "logs/run.log"}), named
