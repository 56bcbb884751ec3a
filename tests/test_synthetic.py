"""The shipped demo data is exactly what the generator makes, and its truth holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sing_audit.nullspace import split_head
from sing_audit.synthetic import PLANTED, make_scenario, true_class_scores, write_scenario

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "synthetic" / "data"


EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


def test_shipped_demo_data_is_regenerable(tmp_path):
    """``python -m sing_audit.synthetic`` remakes the shipped files on any machine.

    "Remakes" means: the same files, keys, dtypes and shapes; labels, ids and class names
    exactly; floats equal to what their storage can tell apart. The generator computes in
    float64 (QR, a pseudo-inverse, products over m = 64 dimensions), and another BLAS kernel
    or thread count rounds those steps differently, by ~1e-16 relative. Every stored array
    is that result rounded to float32: the same value unless it lay within that much of a
    float32 rounding boundary, and then one float32 step (≤ eps32·|x|) apart.
    """
    write_scenario(tmp_path)
    bit_identical = True
    for name in ("benign.npz", "leaky.npz", "clip.npz"):
        with np.load(EXAMPLE / name) as shipped, np.load(tmp_path / name) as fresh:
            assert sorted(shipped.files) == sorted(fresh.files)
            for key in shipped.files:
                old, new = shipped[key], fresh[key]
                assert (old.dtype, old.shape) == (new.dtype, new.shape), (name, key)
                if old.dtype.kind != "f":  # labels (int), class names and image ids (str)
                    np.testing.assert_array_equal(old, new, err_msg=f"{name}:{key}")
                    continue
                assert old.dtype == np.float32, (name, key)
                # one float32 step, plus the generator's float64 error (~1e3·eps64 of the array's
                # scale at most) for entries so near 0 that their float32 step is finer than it
                np.testing.assert_allclose(
                    old, new, rtol=EPS32, atol=1e3 * EPS64 * float(np.abs(new).max()), err_msg=f"{name}:{key}"
                )
                bit_identical = bit_identical and np.array_equal(old, new)
    old_truth = json.loads((EXAMPLE / "truth.json").read_text())
    new_truth = json.loads((tmp_path / "truth.json").read_text())
    assert old_truth["planted"] == new_truth["planted"] == list(PLANTED)
    assert old_truth.keys() == new_truth.keys()
    old_as, new_as = old_truth["class_as_abs_mean"], new_truth["class_as_abs_mean"]
    assert {k: list(v) for k, v in old_as.items()} == {k: list(v) for k, v in new_as.items()}  # models, classes, order
    # The truth is a mean of |AS|, a difference of two angles in [0°, 180°], computed in float64
    # from the arrays above. From bit-identical arrays only float64 rounding differs: 64-term
    # products and 32-dim cosines, ~64·eps64 relative, i.e. 64·eps64·180° at most on an angle
    # (the angles here lie between 11° and 59°, away from 0° and 180° where arccos amplifies
    # cosine errors by 1/sin θ); Prescott kernels move it by 1e-13 relative, 1.5e-14°. From
    # arrays a float32 step apart the inputs are known to eps32 only, and so is each angle:
    # eps32·180°. Either bound is far below the smallest truth value (0.09°) and the 1.5° that
    # tests/test_runner.py holds the audit to.
    atol = (64 * EPS64 if bit_identical else EPS32) * 180.0
    for model, scores in old_as.items():
        for cls, value in scores.items():
            assert abs(value - new_as[model][cls]) <= atol, (model, cls, value, new_as[model][cls], atol)


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
