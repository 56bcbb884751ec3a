"""Streaming into the on-disk store, resuming a killed extraction, store precision."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sing_audit.pipeline.cache import ArrayStore, PartialEntry
from sing_audit.synthetic import SYNSETS
from sing_audit.testing import save_random_target

from .conftest import PIPELINE_POLICY, write_config

VOLATILE = {"started", "finished", "stage_seconds"}


def _strip(value):
    """results.json without timestamps and stage times."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _image_folder(root: Path, per_class: int, size: int = 32) -> Path:
    from PIL import Image

    for k, s in enumerate(SYNSETS):
        (root / s).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.random.default_rng(100 * k + i).integers(0, 255, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / s / f"{s}_{i}.png")
    return root


def _config(folder: Path, root: Path, out: str, **run) -> Path:
    per_class = len(list((root / SYNSETS[0]).iterdir()))
    save_random_target(folder / "t.npz", [f"{s}/{s}_{i}.png" for s in SYNSETS for i in range(per_class)])
    return write_config(
        folder,
        {
            "output": out,
            "dataset": {"plugin": "image_folder", "root": str(root)},
            "target": {"plugin": "precomputed", "path": "t.npz"},
            "backbones": [{"name": "r18", "plugin": "timm", "model": "resnet18", "weights": "random", "img_size": 32}],
            "report": {"formats": ["json"]},
            "policy": PIPELINE_POLICY,
            "run": {"device": "cpu", "folds": 2, "bootstrap": 100, **run},
        },
        name=f"{out}.yaml",
    )


def _run(cfg: Path, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sing_audit.cli", "run", str(cfg)], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def _progress(out: Path) -> int:
    done = 0
    for p in (out / "cache" / "features").glob(".partial-*/progress.json"):
        try:
            done = max(done, json.loads(p.read_text())["done"])
        except (OSError, ValueError, KeyError):
            pass
    return done


#: ``sing-audit run CONFIG`` with half a second's pause after each extracted batch (the
#: store's write patched in this process only), so the run can be interrupted mid-way
_SLOW_RUN = """
import sys, time
from sing_audit.cli import main
from sing_audit.pipeline.cache import PartialEntry

write = PartialEntry.write

def slow_write(self, *args, **kwargs):
    write(self, *args, **kwargs)
    time.sleep(0.5)

PartialEntry.write = slow_write
sys.exit(main(["run", sys.argv[1]]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_extraction_resumes_to_the_same_results(tmp_path, sig):
    root = _image_folder(tmp_path / "val", per_class=8)  # 24 images
    run = {"batch_size": 2, "chunk_images": 2}
    reference_cfg = _config(tmp_path, root, "ref", **run)
    assert _run(reference_cfg).returncode == 0
    reference = _strip(json.loads((tmp_path / "ref" / "results.json").read_text()))

    cfg = _config(tmp_path, root, "out", **run)
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while _progress(tmp_path / "out") < 6 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    killed_at = _progress(tmp_path / "out")
    assert 6 <= killed_at < 24
    assert not (tmp_path / "out" / "results.json").exists()
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err

    # restart without throttling: it continues after the last complete chunk
    done = _run(cfg)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "out" / "logs" / "run.log").read_text()
    assert f"resuming extraction at image {killed_at} of 24" in log
    resumed = _strip(json.loads((tmp_path / "out" / "results.json").read_text()))
    assert resumed["models"] == reference["models"]
    assert resumed["passed"] == reference["passed"]
    assert not list((tmp_path / "out" / "cache" / "features").glob(".partial-*"))


def test_partial_entry_resumes_and_discards_another_fingerprint(tmp_path):
    store = ArrayStore(tmp_path)
    p = PartialEntry(store, "features", "k", 10, "float32", {"batch_size": 2})
    p.write([0, 1], np.ones((2, 3)))
    p.write([2, 3], 2 * np.ones((2, 3)), bad=[])
    p.commit(4)
    p.write([4, 5], 9 * np.ones((2, 3)))  # never committed
    del p
    again = PartialEntry(store, "features", "k", 10, "float32", {"batch_size": 2})
    assert again.done == 4
    np.testing.assert_array_equal(again.values[:4], [[1] * 3] * 2 + [[2] * 3] * 2)
    again.write(list(range(4, 10)), np.full((6, 3), 3.0), bad=[7])
    again.finalize({"head_weight": np.eye(3)}, {"m": 1})
    arrays, meta = store.load("features", "k")
    assert meta == {"m": 1}
    assert arrays["values"].dtype == np.float32 and arrays["values"].shape == (10, 3)
    assert arrays["ok"].tolist() == [True] * 7 + [False] + [True] * 2
    assert float(arrays["values"][7].sum()) == 0.0
    np.testing.assert_array_equal(arrays["head_weight"], np.eye(3))
    other = PartialEntry(store, "features", "k2", 10, "float32", {"batch_size": 2})
    other.write([0, 1], np.ones((2, 3)))
    other.commit(2)
    changed = PartialEntry(store, "features", "k2", 10, "float32", {"batch_size": 4})
    assert changed.done == 0 and changed.values is None


def test_store_dtype_float16_and_autocast_on_cpu(tmp_path, caplog):
    import logging

    from sing_audit.cli import main

    root = _image_folder(tmp_path / "val", per_class=2)
    cfg = _config(tmp_path, root, "out", store_dtype="float16", autocast="bf16")
    with caplog.at_level(logging.INFO, logger="sing_audit"):
        assert main(["run", str(cfg)]) == 0
    values = next((tmp_path / "out" / "cache" / "features").glob("*/values.npy"))
    assert np.load(values, mmap_mode="r").dtype == np.float16
    assert "ignored on cpu" in (tmp_path / "out" / "logs" / "run.log").read_text()


def test_device_names_are_checked_against_the_machine(monkeypatch):
    import torch

    from sing_audit.errors import ConfigError
    from sing_audit.pipeline.extraction import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    for name, message in (("cuda", "no CUDA device"), ("cuda:1", "no CUDA device"), ("mps", "no Apple GPU"), ("tpu", "must be auto")):
        with pytest.raises(ConfigError, match=message):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match="2 CUDA device"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps" and resolve_device("mps") == "mps"
