"""Shared fixtures: the synthetic scenario written once per session, config helpers."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml

from sing_audit.synthetic import make_scenario, write_scenario
from sing_audit.testing import PIPELINE_POLICY, image_folder_audit, save_npz, synthetic_audit, write_config
from sing_audit.testing.shared_cache_off import no_shared_cache, shared_cache_off  # noqa: F401 - the autouse fixture

__all__ = ["PIPELINE_POLICY", "demo_config", "image_folder_audit", "save_npz", "write_config"]  # for the tests

DEMO = Path(__file__).resolve().parents[1] / "examples" / "synthetic"


def demo_config(folder: Path, report: dict, **sections: dict) -> Path:
    """``folder/audit.yaml``: the offline demo (its data read where it lies) writing into
    ``folder/run`` with only ``null_removal``, the given ``report`` section, and each of
    ``sections`` (``policy={...}``) merged into the demo's own."""
    cfg = yaml.safe_load((DEMO / "audit.yaml").read_text(encoding="utf-8"))
    for spec in [cfg["target"], *cfg["backbones"]]:
        spec["path"] = str(DEMO / spec["path"])
    cfg["output"] = str(folder / "run")
    cfg["probes"] = ["null_removal"]
    cfg["report"] = report
    for key, value in sections.items():
        cfg[key].update(value)
    path = folder / "audit.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def pytest_configure(config):
    """Children see SIGINT as a terminal would send it. A command started in the background
    by a non-interactive shell (``pytest &`` in a script, some CI runners) starts with SIGINT
    ignored, and every process it starts inherits that: a sing-audit run would then shrug off
    the SIGINT that tests/test_scale.py sends to interrupt it. Handled here, a handler is
    reset to the default in each child at exec."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    shared_cache_off()  # before any fixture runs an audit (sing_audit.testing.shared_cache_off)


@pytest.fixture(autouse=True)
def _no_ci_step_summary(monkeypatch):
    """Tests never append to a real CI step summary."""
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)


@pytest.fixture(scope="session")
def scenario_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scenario")
    write_scenario(folder)
    return folder


@pytest.fixture(scope="session")
def scenario():
    return make_scenario()


@pytest.fixture(scope="session")
def truth(scenario_dir) -> dict:
    return json.loads((scenario_dir / "truth.json").read_text())


@pytest.fixture
def synthetic_config(tmp_path, scenario_dir):
    """A function: extra keys -> path of a config auditing the synthetic scenario."""

    def make(**extra) -> Path:
        return synthetic_audit(tmp_path, scenario_dir, **extra)

    return make
