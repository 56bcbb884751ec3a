"""The benchmark's reference computations: the plain numpy/scikit-learn way must compute the
numbers the audit reports (the same bootstrap resamples included), or its ratio compares
unlike work."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("sing_bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "sing_bench_run", module)
    spec.loader.exec_module(module)
    # a small problem of the same shape: more features than classes (a null space), N ≥ m
    monkeypatch.setattr(module, "M", 48)
    monkeypatch.setattr(module, "NDIM", 16)
    monkeypatch.setattr(module, "C", 12)
    return module


def test_plain_way_reproduces_the_audits_numbers_and_intervals(bench, tmp_path):
    """Per image, per class (means and every bootstrap bound), model intervals, fidelity,
    drift and sanity figures: the plain way equals the audit's analysis to rounding, because
    it draws the same resamples from the same seed in the same order."""
    bench.synthetic(600, tmp_path)
    mine = bench.ours(tmp_path, {"plugin": "linear", "alpha": bench.FIXED_ALPHA}, trace=False)
    k = int(mine["folds"].max()) + 1
    ref = bench.plain(tmp_path, mine["folds"], [bench.FIXED_ALPHA] * k, mine["bootstrap"], mine["seed"])
    assert mine["bootstrap"] == 1000  # the audit's default, not a benchmark-only setting
    for key in ("is", "as", "as_contrast"):
        assert bench._max_diff(mine[key], ref[key]) < 1e-9, key
    for key, value in mine["figures"].items():
        # intervals are quantiles of the same resampled means: equal to rounding, not to
        # Monte Carlo error (a different draw would move them by ~0.1° here)
        assert bench._max_diff(value, ref["figures"][key]) < 1e-9, key


def test_max_diff_refuses_mismatched_missing_values(bench):
    assert bench._max_diff(np.array([1.0, np.nan]), np.array([1.0, np.nan])) == 0.0
    assert np.isnan(bench._max_diff(np.array([1.0, np.nan]), np.array([1.0, 2.0])))


def test_jpegs_are_the_count_asked_for(bench, tmp_path):
    """160 images over 3 classes: 54 + 53 + 53, not 159."""
    paths = bench._write_jpegs(tmp_path, 160, 24)
    assert len(paths) == 160 and len({p.parent.name for p in paths}) == 3
