"""The shipped demo data is exactly what the generator makes, and its truth holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sing_audit.nullspace import split_head
from sing_audit.synthetic import PLANTED, make_scenario, true_class_scores, write_scenario

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "synthetic" / "data"


def test_shipped_demo_data_is_regenerable(tmp_path):
    write_scenario(tmp_path)
    for name in ("benign.npz", "leaky.npz", "clip.npz"):
        with np.load(EXAMPLE / name) as shipped, np.load(tmp_path / name) as fresh:
            assert sorted(shipped.files) == sorted(fresh.files)
            for key in shipped.files:
                np.testing.assert_array_equal(shipped[key], fresh[key])
    assert json.loads((EXAMPLE / "truth.json").read_text()) == json.loads((tmp_path / "truth.json").read_text())


def test_scenario_truth_plants_leakage_only_where_intended():
    s = make_scenario(per_class=20)
    for model in ("benign", "leaky"):
        w, _ = s.heads[model]
        assert split_head(w).null_dim == 54
        scores = true_class_scores(s, model)
        for name, value in scores.items():
            if model == "leaky" and name in PLANTED:
                assert value > 10
            else:
                assert value < 1


def test_true_translator_reproduces_embeddings():
    s = make_scenario(per_class=20, observation_noise=0.0)
    for model in ("benign", "leaky"):
        pred = s.features[model].astype(np.float64) @ s.translators[model].T
        np.testing.assert_allclose(pred, s.embeddings, atol=1e-5)
