"""The run pipeline's own pieces: the headline read, translation by fold, the per-image
table, and a run whose result matches the per-image file it wrote."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from sing_audit.errors import ConfigError
from sing_audit.pipeline import run_audit
from sing_audit.pipeline.crossfit import translate_by_fold
from sing_audit.pipeline.model import headline_scores
from sing_audit.probes import ProbeOutput, Scores


def _scores(n: int, value: float) -> Scores:
    return Scores(np.full(n, value), np.full(n, -value), np.full(n, 0.5 * value))


def test_headline_takes_the_first_scores_and_the_drift_of_null_removal():
    drift = {"logit_drift_relative_max": 1e-9, "logit_drift_relative_mean": 1e-10, "prediction_agreement": 1.0}
    outputs = [
        ("concepts", ProbeOutput(summary={"prediction_agreement": 0.5})),
        ("other", ProbeOutput(scores=_scores(3, 2.0))),
        ("null_removal", ProbeOutput(summary=drift, scores=_scores(3, 7.0))),
    ]
    headline = headline_scores(outputs)
    assert headline.probe == "null_removal"
    np.testing.assert_array_equal(headline.scores.image_score, np.full(3, 2.0))
    assert headline.drift.relative_max == 1e-9 and headline.drift.prediction_agreement == 1.0
    assert headline_scores([("other", ProbeOutput(scores=_scores(2, 1.0)))]).drift.relative_max is None


def test_no_scores_is_a_config_error_naming_the_probe():
    with pytest.raises(ConfigError, match="include null_removal in probes"):
        headline_scores([("concepts", ProbeOutput(summary={"n": 3}))])


class _Scale:
    def __init__(self, k: float):
        self.k = k

    def predict(self, x):
        return np.asarray(x, dtype=np.float64) * self.k


def test_each_row_is_translated_by_its_own_fold():
    folds = np.array([0, 1, 2, 1, 0, 2])
    translators = [_Scale(1.0), _Scale(10.0), _Scale(100.0)]
    changed = np.ones((3, 2))
    rows = np.array([1, 2, 5])  # folds 1, 2, 2
    out = translate_by_fold(translators, folds, 2, changed, rows)
    np.testing.assert_array_equal(out, [[10.0, 10.0], [100.0, 100.0], [100.0, 100.0]])


def test_the_result_and_its_per_image_table_tell_the_same_story(synthetic_config):
    result = run_audit(synthetic_config(probes=["null_removal", "nullspace_validation"]))
    out = result.provenance.config["output"]
    for m in result.models:
        with open(f"{out}/{m.files['images_csv']}", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == m.n_images
        # the headline probe's columns keep their names, every other probe's are prefixed
        assert {"is", "as", "nullspace_validation.logit_change_null"} <= set(rows[0])
        assert not any(c.startswith("null_removal.") for c in rows[0])
        assert np.isclose(np.mean([abs(float(r["as"])) for r in rows]), m.as_abs_mean, rtol=1e-12)
        assert np.isclose(np.mean([float(r["is"]) for r in rows]), m.is_mean, rtol=1e-12)
        assert m.summary and m.passed == (m.assessed and not m.policy_failures)
        top = [e.image_id for e in m.top_images]
        by_as = sorted(rows, key=lambda r: -abs(float(r["as"])))
        assert top == [r["image_id"] for r in by_as[: len(top)]]
    written = json.loads(Path(out, "results.json").read_text())
    assert written["models"] == json.loads(result.model_dump_json())["models"]
