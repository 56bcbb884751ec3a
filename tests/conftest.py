"""Shared fixtures: the synthetic scenario written once per session, config helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from sing_audit.synthetic import make_scenario, write_scenario


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


def write_config(folder: Path, data: dict, name: str = "audit.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def synthetic_config(tmp_path, scenario_dir):
    """A function: extra keys -> path of a config auditing the synthetic scenario."""

    def make(**extra) -> Path:
        data = {
            "name": "synthetic",
            "output": str(tmp_path / "out"),
            "target": {"plugin": "precomputed", "name": "clip", "path": str(scenario_dir / "clip.npz")},
            "backbones": [
                {"name": "benign", "plugin": "precomputed", "path": str(scenario_dir / "benign.npz")},
                {"name": "leaky", "plugin": "precomputed", "path": str(scenario_dir / "leaky.npz")},
            ],
            "run": {"bootstrap": 200},
        }
        data.update(extra)
        return write_config(tmp_path, data)

    return make


def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path
