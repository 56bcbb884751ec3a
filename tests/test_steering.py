"""Steering in closed form against a direct computation, and the steering/validation probes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sing_audit.cli import main
from sing_audit.nullspace import split_head
from sing_audit.steering import steer_dense, steer_linear, steering_operators


def _problem(seed, m=14, c=5, n=6, n_img=6, k=4):
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(c, m)), rng.normal(size=c)
    a, c0 = rng.normal(size=(n, m)), rng.normal(size=n)
    f, t = rng.normal(size=(n_img, m)), rng.normal(size=(k, n))
    return w, b, a, c0, f, t, rng.uniform(0.1, 3.0, n_img)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rule=st.sampled_from(["rank", "fixed"]))
def test_closed_form_equals_direct_computation(seed, rule):
    w, b, a, c0, f, t, eps = _problem(seed)
    sub = split_head(w, rule, rank=2 if rule == "fixed" else None)
    fast = steer_linear(f @ a.T + c0, t, eps, steering_operators(a, sub, w), np.linalg.norm(f @ w.T + b, axis=1))
    slow = steer_dense(f, a, c0, t, eps, sub, w, b)
    np.testing.assert_allclose(fast.attribute_score, slow.attribute_score, atol=1e-8)
    np.testing.assert_allclose(fast.image_score, slow.image_score, atol=1e-8)
    np.testing.assert_allclose(fast.logit_change, slow.logit_change, atol=1e-10)
    if rule == "rank":
        assert np.nanmax(fast.logit_change) < 1e-10


def test_small_steps_move_toward_the_prompt():
    for seed in range(20):
        w, b, a, c0, f, t, _ = _problem(seed)
        sub = split_head(w)
        r = steer_linear(f @ a.T + c0, t, np.full(len(f), 1e-3), steering_operators(a, sub, w), np.ones(len(f)))
        assert np.all(r.attribute_score > 0)  # a small gradient step raises the cosine


def test_zero_direction_is_reported_not_divided_by():
    w, b, a, c0, f, t, eps = _problem(1)
    sub = split_head(w)
    a_blind = a @ sub.principal @ sub.principal.T  # the translator ignores the null space
    r = steer_linear(f @ a_blind.T + c0, t, eps, steering_operators(a_blind, sub, w), np.ones(len(f)))
    assert r.zero_direction.all()
    assert np.isnan(r.attribute_score).all()


def _steering_peak(m: int, n_img: int = 4_000, k: int = 500) -> int:
    import tracemalloc

    rng = np.random.default_rng(0)
    n, c = 32, 10
    w = rng.normal(size=(c, m))
    sub = split_head(w)
    a = rng.normal(size=(n, m))
    u, t = rng.normal(size=(n_img, n)), rng.normal(size=(k, n))
    ops = steering_operators(a, sub, w)
    tracemalloc.start()
    r = steer_linear(u, t, np.ones(n_img), ops, np.ones(n_img))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert r.attribute_score.shape == (n_img, k)
    return peak


def test_steering_memory_does_not_grow_with_feature_width():
    """No N×K×m tensor: peak memory is the N×K outputs plus bounded chunks, whatever m is."""
    small, large = _steering_peak(16), _steering_peak(1024)
    assert large < 1.2 * small
    outputs = 4_000 * 500 * (3 * 8 + 1)
    assert large < 10 * outputs  # the dense N×K×m float64 tensor at m=1024 would be 656 × outputs


def _run(synthetic_config, tmp_path, probes):
    main(["run", str(synthetic_config(probes=probes, policy={"max_flagged": 5}))])
    return json.loads((tmp_path / "out" / "results.json").read_text())


def test_steering_probe_table_layout(synthetic_config, tmp_path):
    probes = ["null_removal", {"plugin": "steering", "pairs": [{"from": "sports car", "to": "jellyfish"}], "classes": ["daisy"]}]
    res = _run(synthetic_config, tmp_path, probes)
    by = {m["name"]: m["probes"]["steering"] for m in res["models"]}
    for summary in by.values():
        rows = {(t["prompt"], t["source"]): t for t in summary["targets"]}
        pair = rows[("jellyfish", "sports car")]
        assert pair["n"] == 60 and pair["as_mean"] > 0 and pair["logit_drift"] < 1e-6
        assert rows[("daisy", "all other classes")]["n"] == 540
    # the leaky model's null space carries class directions: steering moves it further
    leaky = {t["prompt"]: t for t in by["leaky"]["targets"]}
    benign = {t["prompt"]: t for t in by["benign"]["targets"]}
    assert leaky["jellyfish"]["as_mean"] > benign["jellyfish"]["as_mean"]


def test_calibrated_steps_reach_the_requested_is(synthetic_config, tmp_path):
    probes = ["null_removal", {"plugin": "steering", "classes": ["daisy"], "epsilon_mode": "calibrated", "calibrate_is": 5.0}]
    res = _run(synthetic_config, tmp_path, probes)
    for m in res["models"]:
        (row,) = m["probes"]["steering"]["targets"]
        assert row["is_mean"] == pytest.approx(5.0, abs=0.01)


def test_free_text_prompt_needs_a_text_encoder(synthetic_config, capsys):
    cfg = synthetic_config(probes=["null_removal", {"plugin": "steering", "prompts": ["a red car"]}])
    assert main(["run", str(cfg)]) == 2
    assert "no text encoder" in capsys.readouterr().err


def test_unknown_class_in_pair(synthetic_config, capsys):
    cfg = synthetic_config(probes=["null_removal", {"plugin": "steering", "pairs": [{"from": "sport car", "to": "daisy"}]}])
    assert main(["run", str(cfg)]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_nullspace_validation(synthetic_config, tmp_path):
    res = _run(synthetic_config, tmp_path, ["null_removal", "nullspace_validation"])
    for m in res["models"]:
        v = m["probes"]["nullspace_validation"]
        assert v["passed"] and v["null_max"] < 1e-6
        assert v["random"] > 0.05 and v["principal"] > v["random"]


def test_autograd_path_matches_closed_form(synthetic_config, tmp_path, monkeypatch):
    """A translator without linear_map is steered through torch_forward; same numbers."""
    import torch

    from sing_audit.builtins import steering_probe
    from sing_audit.builtins.linear_translator import LinearTranslator

    probes = ["null_removal", {"plugin": "steering", "pairs": [{"from": "sports car", "to": "jellyfish"}]}]
    closed = _run(synthetic_config, tmp_path, probes)

    class Opaque:
        """The fitted linear translator seen as a black box with a torch forward."""

        def __init__(self, inner):
            self.inner = inner

        def linear_map(self):
            return None

        def predict(self, f):
            return self.inner.predict(f)

        def torch_forward(self, x):
            a, c = self.inner.linear_map()
            return x @ torch.as_tensor(a).T + torch.as_tensor(c)

    original = steering_probe.SteeringProbe._steer

    def opaque_steer(self, ctx, prompts, scale, rows):
        ctx.translators = [Opaque(t) if isinstance(t, LinearTranslator) else t for t in ctx.translators]
        return original(self, ctx, prompts, scale, rows)

    monkeypatch.setattr(steering_probe.SteeringProbe, "_steer", opaque_steer)
    main(["run", str(synthetic_config(probes=probes, policy={"max_flagged": 5})), "--force"])
    autograd = json.loads((tmp_path / "out" / "results.json").read_text())
    for a, b in zip(closed["models"], autograd["models"], strict=True):
        (ra,) = a["probes"]["steering"]["targets"]
        (rb,) = b["probes"]["steering"]["targets"]
        assert rb["as_mean"] == pytest.approx(ra["as_mean"], abs=1e-6)
        assert rb["is_mean"] == pytest.approx(ra["is_mean"], abs=1e-6)
