"""Shared fixtures: the synthetic scenario written once per session, config helpers."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml

from sing_audit.synthetic import make_scenario, write_scenario


def pytest_configure(config):
    """Children see SIGINT as a terminal would send it. A command started in the background
    by a non-interactive shell (``pytest &`` in a script, some CI runners) starts with SIGINT
    ignored, and every process it starts inherits that: a sing-audit run would then shrug off
    the SIGINT that tests/test_scale.py sends to interrupt it. Handled here, a handler is
    reset to the default in each child at exec."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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


#: the policy of pipeline tests on tiny image folders: with a few images per class no class
#: reaches min_images, so the models are "not assessed" (exit 1) — the test checks the
#: pipeline, not a verdict, and says so, like examples/pipeline_check/audit.yaml
PIPELINE_POLICY = {"allow_not_assessed": True}


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


def image_folder_audit(
    tmp_path: Path, backbones: list[dict], per_class: int = 4, size: int = 32, root: Path | None = None, **extra
) -> Path:
    """A tiny image-folder audit (3 ImageNet synset classes) with a precomputed target
    aligned by image ids, so only the backbones under test run a model. Returns the
    config path; ``extra`` keys (probes, policy, run, dataset options...) are merged in.
    ``root``: an existing folder of that layout (e.g. with a corrupt image) instead of a new one."""
    from sing_audit.synthetic import SYNSETS, write_image_folder

    if root is None:
        root = write_image_folder(tmp_path / "val", per_class=per_class, size=size)
    ids = [f"{s}/{s}_{i}.png" for s in SYNSETS for i in range(per_class)]
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "t.npz",
        image_embeddings=rng.normal(size=(len(ids), 8)).astype(np.float32),
        text_embeddings=rng.normal(size=(1000, 8)).astype(np.float32),
        image_ids=np.array(ids),
    )
    data = {
        "output": "out",
        "dataset": {"plugin": "image_folder", "root": str(root), **extra.pop("dataset", {})},
        "target": {"plugin": "precomputed", "path": "t.npz"},
        "backbones": backbones,
        "run": {"device": "cpu", "folds": 2, "bootstrap": 100},
        "policy": dict(PIPELINE_POLICY),
    }
    data.update(extra)
    return write_config(tmp_path, data)
