"""Probe roles and typed summaries: the headline IS/AS come from the probe with the
headline role, not from a probe's name; summaries are the probes' own models."""

from __future__ import annotations

import pytest

from sing_audit import hookimpl
from sing_audit.builtins.null_removal import NullRemoval, NullRemovalSummary
from sing_audit.builtins.steering_probe import SteeringSummary, SteeringTarget
from sing_audit.config import load_config
from sing_audit.errors import ConfigError
from sing_audit.host import create_plugin_manager, create_registry
from sing_audit.probes import HEADLINE, Probe, ProbeOutput, headline_probe, probe_summary
from sing_audit.results import ModelResult


class MyScores(NullRemoval):
    """A third party's headline probe: null removal's numbers under its own name."""


class NotHeadline(Probe):
    def run(self, ctx):
        return ProbeOutput()


class Plugin:
    @hookimpl
    def register_probes(self, register):
        register("my_scores", MyScores)
        register("not_headline", NotHeadline)


@pytest.fixture
def registry():
    pm = create_plugin_manager(load_entry_points=False)
    pm.register(Plugin(), name="third-party-probes")
    return create_registry(pm)


def test_the_built_in_headline_probe_is_null_removal():
    assert NullRemoval.role == HEADLINE and NullRemoval.Summary is NullRemovalSummary
    assert headline_probe([NotHeadline(), NullRemoval()]).__class__ is NullRemoval


def test_a_third_party_headline_probe_needs_no_null_removal(synthetic_config, registry):
    cfg = load_config(synthetic_config(probes=["my_scores", "not_headline"]), registry=registry)
    from sing_audit.pipeline import build_plan

    plan = build_plan(cfg, registry)
    assert headline_probe(plan.probes).plugin == "my_scores"


def test_a_third_party_headline_probe_sets_the_headline_numbers(synthetic_config, registry):
    from sing_audit.pipeline import run_audit

    base = run_audit(synthetic_config(probes=["null_removal"]))
    cfg = load_config(synthetic_config(probes=["not_headline", "my_scores"], output="out-mine"), registry=registry)
    mine = run_audit(cfg, registry=registry)
    for a, b in zip(base.models, mine.models):
        assert (a.is_mean, a.as_abs_mean, a.is_as_ratio) == (b.is_mean, b.as_abs_mean, b.is_as_ratio)
        assert a.logit_drift == b.logit_drift and b.probes["my_scores"] == a.probes["null_removal"]
        assert "null_removal" not in b.probes


def test_no_probe_with_the_headline_role_is_a_config_error(synthetic_config, registry):
    with pytest.raises(ConfigError, match="headline role.*null_removal"):
        load_config(synthetic_config(probes=["not_headline"]), registry=registry)
    with pytest.raises(ConfigError, match="headline role.*null_removal"):
        headline_probe([NotHeadline()])


def test_two_headline_probes_are_a_config_error():
    with pytest.raises(ConfigError, match="only one probe"):
        headline_probe([NullRemoval(), MyScores()])


def test_a_summary_serialises_to_the_keys_its_probe_set():
    empty = SteeringSummary(epsilon_mode="relative", targets=[], note="no null space: nothing to steer")
    assert empty.as_json() == {"epsilon_mode": "relative", "targets": [], "note": "no null space: nothing to steer"}
    full = SteeringSummary(epsilon_mode="absolute", epsilon=1.0, zero_directions=0,
                           targets=[SteeringTarget(prompt="daisy", as_mean=2.0)])
    assert list(full.as_json()) == ["epsilon_mode", "epsilon", "zero_directions", "targets"]
    assert full.as_json()["targets"] == [{"prompt": "daisy", "as_mean": 2.0}]
    assert ProbeOutput(summary=full).summary == full.as_json()


def test_readers_get_the_typed_summary_back():
    raw = {"epsilon_mode": "relative", "epsilon": 0.5, "targets": [{"prompt": "a red car", "as_mean": 1.5, "is_mean": 2.0,
                                                                      "logit_drift": 1e-9}]}
    m = ModelResult.model_construct(probes={"steering": raw})
    summary = probe_summary(m, SteeringSummary)
    assert summary.targets[0].prompt == "a red car" and summary.as_json() == raw
    assert probe_summary(ModelResult.model_construct(probes={}), SteeringSummary) is None
    assert summary.explain_lines(str) == ["  steering toward 'a red car': AS +1.50°, IS 2.00°, logit drift 1.00e-09"]
