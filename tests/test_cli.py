"""The CLI's other commands, its help, and the docs that must stay in step with the code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sing_audit import hookspecs
from sing_audit.cli import build_parser, main
from sing_audit.host import KINDS, create_registry

ROOT = Path(__file__).resolve().parents[1]


def test_validate_ok_and_bad(synthetic_config, capsys):
    cfg = synthetic_config()
    assert main(["validate", str(cfg)]) == 0
    assert "valid" in capsys.readouterr().out
    assert not (cfg.parent / "out").exists(), "validate must not run or write anything"
    assert main(["validate", str(cfg), "-o", "nullspace.rule=energy"]) == 2
    err = capsys.readouterr().err
    assert "keep" in err and str(cfg) in err


def test_validate_checks_plugin_options(synthetic_config, capsys):
    cfg = synthetic_config(translator={"plugin": "linear", "alpah": 1.0})
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "translator.alpah" in err and "did you mean" in err and '"alpha"' in err


def test_validate_missing_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_schema_lists_plugin_options(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    backbone_variants = schema["properties"]["backbones"]["items"]["oneOf"]
    names = {v["properties"]["plugin"]["const"] for v in backbone_variants}
    assert {"timm", "precomputed"} <= names
    timm = next(v for v in backbone_variants if v["properties"]["plugin"]["const"] == "timm")
    assert "weights" in timm["properties"] and "base_dir" not in timm["properties"]


def test_plugins_lists_every_component_with_its_package(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    registered = {(r.kind, r.name) for r in create_registry().all()}
    assert {(r["kind"], r["name"]) for r in rows} == registered
    assert all(r["package"].startswith("sing-audit") for r in rows)
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    for _, name in registered:
        assert name in text


def test_console_script_runs_and_exit_code_is_the_verdict(synthetic_config):
    cfg = synthetic_config()
    proc = subprocess.run([sys.executable, "-m", "sing_audit.cli", "run", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "FAILED" in proc.stdout and "sports car" in proc.stdout


def test_bad_input_has_no_traceback_unless_debug(synthetic_config, capsys):
    cfg = synthetic_config(policy={"min_images": 0})
    assert main(["run", str(cfg)]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["--debug", "run", str(cfg)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "sing-audit" in capsys.readouterr().out


# --------------------------------------------------------------------------- docs in step


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_hook_is_documented_and_in_the_readme():
    specs = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert sorted(specs) == sorted(KINDS.values())
    for name in specs:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert ":param register:" in doc, name
        assert name in _readme(), name


def test_every_cli_command_is_in_the_readme():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for command in sub.choices:
        assert f"sing-audit {command}" in _readme(), command


def test_readme_first_screen_has_setup_and_test_commands_used_by_ci():
    first_screen = "\n".join(_readme().splitlines()[:25])
    setup = re.search(r"^(pip install -r requirements-dev\.txt && sing-audit run \S+)", first_screen, re.M)
    test = re.search(r"^(python -m pytest)\s", first_screen, re.M)
    assert setup and test
    ci = (ROOT / ".ci" / "run").read_text()
    assert setup.group(1) in ci and test.group(1) in ci


def test_readme_exit_codes_match_cli():
    from sing_audit import cli

    for code in (cli.EXIT_PASSED, cli.EXIT_POLICY_FAILED, cli.EXIT_BAD_INPUT, cli.EXIT_INTERNAL, cli.EXIT_INTERRUPTED):
        assert f"| {code} |" in _readme()
