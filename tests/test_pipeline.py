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
from sing_audit.builtins.null_removal import NullRemoval
from sing_audit.host import Component
from sing_audit.probes import Probe, ProbeOutput, Scores


def _scores(n: int, value: float) -> Scores:
    return Scores(np.full(n, value), np.full(n, -value), np.full(n, 0.5 * value))


class NotHeadline(Probe):
    def run(self, ctx):
        return ProbeOutput()


def _component(plugin: str, instance) -> Component:
    return Component(kind="probe", name=plugin, plugin=plugin, package="tests", instance=instance, options=None)


def test_headline_is_the_probe_with_the_headline_role_not_the_first_with_scores():
    drift = {"logit_drift_relative_max": 1e-9, "logit_drift_relative_mean": 1e-10, "prediction_agreement": 1.0}
    probes = [_component("concepts", NotHeadline()), _component("other", NotHeadline()), _component("mine", NullRemoval())]
    outputs = [
        ("concepts", ProbeOutput(summary={"prediction_agreement": 0.5})),
        ("other", ProbeOutput(scores=_scores(3, 2.0))),
        ("mine", ProbeOutput(summary=drift, scores=_scores(3, 7.0))),
    ]
    headline = headline_scores(probes, outputs)
    assert headline.probe == "mine"
    np.testing.assert_array_equal(headline.scores.image_score, np.full(3, 7.0))
    assert headline.drift.relative_max == 1e-9 and headline.drift.prediction_agreement == 1.0
    # a headline probe that reports no drift: the result says so (None), it does not invent one
    bare = headline_scores([_component("mine", NullRemoval())], [("mine", ProbeOutput(scores=_scores(2, 1.0)))])
    assert bare.drift.relative_max is None


def test_a_headline_probe_without_scores_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="headline probe mine produced no image and attribute scores"):
        headline_scores([_component("mine", NullRemoval())], [("mine", ProbeOutput(summary={"n": 3}))])
    with pytest.raises(ConfigError, match="headline role.*null_removal"):
        headline_scores([_component("other", NotHeadline())], [("other", ProbeOutput(scores=_scores(2, 1.0)))])


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
