"""An audit under the rank rule's absolute cut says which cut it used and whether its null
space is exact, in results.json, summary.md and the HTML report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sing_audit.cli import main
from sing_audit.nullspace import split_head

from .conftest import DEMO, demo_config


def _demo_head_singular_values(name: str) -> np.ndarray:
    with np.load(DEMO / "data" / f"{name}.npz", allow_pickle=False) as z:
        return np.linalg.svd(np.asarray(z["head_weight"], dtype=np.float64), compute_uv=False)


def _run(tmp_path, atol):
    config = demo_config(tmp_path, {"formats": ["json", "markdown", "html"]},
                         nullspace={"rule": "rank", "atol": atol}, policy={})
    main(["-q", "run", str(config)])
    return tmp_path / "run"


def test_absolute_cut_below_the_spectrum_is_exact_and_labelled(tmp_path):
    run = _run(tmp_path, 1e-5)
    res = json.loads((run / "results.json").read_text())
    for m in res["models"]:
        s = _demo_head_singular_values(m["name"])
        # the contract field keeps the rule's name; the cut is beside it
        assert m["rank_rule"] == "rank" and m["rank_cut"] == "atol 1e-05"
        assert m["rank"] == int(np.count_nonzero(s > 1e-5))
        assert m["null_exact"] is True
    assert "rank (atol 1e-05)" in (run / "summary.md").read_text()
    html = (run / "report.html").read_text()
    assert "rank (atol 1e-05) rule" in html and "an approximate null space" not in html


def test_absolute_cut_inside_the_spectrum_is_approximate_and_says_so(tmp_path):
    s = _demo_head_singular_values("leaky")
    atol = float(np.median(s))  # drops real directions of the head
    run = _run(tmp_path, atol)
    res = json.loads((run / "results.json").read_text())
    leaky = next(m for m in res["models"] if m["name"] == "leaky")
    assert leaky["rank"] == int(np.count_nonzero(s > atol)) < s.size
    assert leaky["null_exact"] is False
    # the dropped directions carry logits: the drift is reported and is not rounding
    assert leaky["logit_drift"]["relative_max"] > 1e-3
    html = (run / "report.html").read_text()
    assert f"rank (atol {atol:g})" in html and "an approximate null space" in html
