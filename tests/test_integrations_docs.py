"""Every ``bash`` and ``python`` block of docs/integrations.md runs, in order, in one
empty folder holding a copy of examples/synthetic (the page's examples are its tests)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .test_plugin_docs import code_blocks, run_python_block

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "integrations.md"


INTEGRATIONS = ("MLflow", "Weights & Biases", "Model card", "SARIF code scanning", "Signed attestation")


def sections(text: str) -> dict[str, str]:
    """``{heading: body}`` of every ``##`` section."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_integration_has_a_section_with_a_runnable_example():
    found = sections(DOCS.read_text(encoding="utf-8"))
    for name in INTEGRATIONS:
        assert name in found, f"docs/integrations.md has no section {name!r}"
        body = found[name]
        assert "(section to come" not in body, name
        runnable = [lang for lang, _, _ in code_blocks(body) if lang in ("bash", "python")]
        assert runnable, f"the {name} section has no bash or python example"


def test_the_readme_lists_every_integration_in_one_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = sections(readme)["Integrations: trackers, model cards, code scanning, a signed attestation"]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    assert len(rows) == 1 + len(INTEGRATIONS)
    assert "docs/integrations.md" in table


@pytest.mark.slow
def test_docs_examples_run(tmp_path, monkeypatch):
    shutil.copytree(ROOT / "examples" / "synthetic", tmp_path / "examples" / "synthetic")
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SING_AUDIT_LOAD_PLUGINS", None)
    for key in [k for k in env if k.startswith(("MLFLOW_", "WANDB_"))]:
        env.pop(key)
    monkeypatch.setattr(os, "environ", env)
    text = DOCS.read_text(encoding="utf-8")
    namespace: dict = {"__name__": "docs_integrations"}
    for lang, start, code in code_blocks(text):
        if lang == "bash":
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                timeout=600,
            )
            if proc.returncode != 0:
                pytest.fail(
                    f"docs/integrations.md line {start}: the bash block exits {proc.returncode}\n{code}\n"
                    f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
                )
        elif lang == "python":
            run_python_block(DOCS, start, code, namespace)
