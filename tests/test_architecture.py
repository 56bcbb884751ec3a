"""The architecture of docs/architecture.md holds: the import rule (import-linter's
contracts in pyproject.toml, run through ``lint-imports``), every core module has its
place in the layers, and no module is longer than a reader can hold in mind."""

from __future__ import annotations

import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sing_audit

REPO = Path(__file__).resolve().parents[1]
#: lines a module may have: "no module over about 400 lines" (docs/architecture.md)
MAX_MODULE_LINES = 450


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _lint_imports() -> str:
    exe = Path(sys.executable).with_name("lint-imports")
    found = str(exe) if exe.exists() else shutil.which("lint-imports")
    assert found, "lint-imports (import-linter, in the dev extra) is not installed"
    return found


def test_the_import_rule_holds():
    proc = subprocess.run([_lint_imports(), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    contracts = _pyproject()["tool"]["importlinter"]["contracts"]
    assert f"Contracts: {len(contracts)} kept, 0 broken." in proc.stdout, proc.stdout[-6000:]


def test_every_core_module_has_its_place_in_the_layers():
    """A new module must be put in a layer (an unlisted module would escape the rule)."""
    (layers,) = [c["layers"] for c in _pyproject()["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    placed = {m.strip() for layer in layers for group in layer.split("|") for m in group.split(":")}
    modules = {f"sing_audit.{m.name}" for m in pkgutil.iter_modules(sing_audit.__path__) if m.name != "__main__"}
    assert modules - placed == set(), "put these modules in a layer of [tool.importlinter] in pyproject.toml"
    assert placed - modules == set(), "the layers name modules that do not exist"


def test_a_broken_rule_is_reported(tmp_path):
    """The check can fail: with the run put above the command, the command's imports of the
    run break the layers contract."""
    bad = tmp_path / "pyproject.toml"
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    bad.write_text(text.replace('"sing_audit.cli",\n    "sing_audit.pipeline",', '"sing_audit.pipeline",\n    "sing_audit.cli",', 1),
                   encoding="utf-8")
    assert bad.read_text(encoding="utf-8") != text
    proc = subprocess.run([_lint_imports(), "--no-cache", "--config", str(bad)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0 and "sing_audit.cli is not allowed to import sing_audit.pipeline" in proc.stdout, proc.stdout[-3000:]


def _python_blocks(text: str) -> list[tuple[int, str]]:
    blocks, start, lines = [], None, []
    for number, line in enumerate(text.splitlines(), start=1):
        if start is None and line.strip() == "```python":
            start, lines = number + 1, []
        elif start is not None and line.strip() == "```":
            blocks.append((start, "\n".join(lines) + "\n"))
            start = None
        elif start is not None:
            lines.append(line)
    return blocks


def test_the_add_a_component_examples_run(tmp_path, monkeypatch):
    """docs/architecture.md's recipes, in order, in one namespace (one per kind of component)."""
    monkeypatch.chdir(tmp_path)
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    blocks = _python_blocks(text)
    hooks = ["register_backbones", "register_targets", "register_translators", "register_probes",
             "register_report_sections", "register_reporters"]
    assert all(any(f"def {h}(" in code for _, code in blocks) for h in hooks)
    namespace: dict = {"__name__": "architecture_docs"}
    for line, code in blocks:
        exec(compile(code, f"docs/architecture.md:{line}", "exec"), namespace)  # noqa: S102 - our own docs


def test_no_module_is_too_long_to_read():
    tracked = subprocess.run(["git", "ls-files", "-z", "sing_audit", "plugins"], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split("\0")
    sources = [REPO / p for p in tracked if p.endswith(".py") and "/tests/" not in p]
    assert len(sources) > 50
    long = {str(p.relative_to(REPO)): n for p in sources
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"
