"""``sing-audit check-claims`` on hand-made results.json files: each claim's held, not
held and not measurable paths, the random-weights stamp, exit codes and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sing_audit.builtins.paper_claims import (
    LOGIT_CORRELATION_MARGIN,
    PAPER_LOGIT_CORRELATION,
    PAPER_MODELS,
    RANDOM_STAMP,
    STEERING_SIGMAS,
    check_claims,
    exit_code,
)
from sing_audit.cli import main
from sing_audit.testing.results import sample_result

#: IS/AS ratios in the paper's order: DINO ViT highest, ResNeXt-101 lowest
PAPER_ORDER = {"dino_vit": 3.0, "resnet50": 1.2, "resnext101": 0.8, "efficientnet_b4": 1.5, "bit_resnetv2": 2.0}


def steering(*values: tuple[float, float, int]) -> dict:
    """A steering summary: one target per ``(as_mean, as_std, n)``."""
    return {"probe": "steering", "epsilon_mode": "calibrated", "epsilon": 1.0,
            "targets": [{"prompt": f"p{i}", "source": "tench", "n": n, "as_mean": a, "as_std": s, "is_mean": 10.0}
                        for i, (a, s, n) in enumerate(values)]}


def paper_result(ratios=None, steer=None, logit=0.97, random=(), drop=(), not_assessed=(), names=None, target="karlo",
                 extra_target=False):
    """A results.json of the paper's five models, every claim held unless told otherwise."""
    ratios = dict(PAPER_ORDER) | dict(ratios or {})
    steer = {"resnet50": steering((12.1, 1.0, 100)), "dino_vit": steering((-5.2, 1.0, 100))} | dict(steer or {})
    base = sample_result().models[0]
    models = []
    for key in PAPER_MODELS:
        if key in drop:
            continue
        name = (names or {}).get(key, PAPER_MODELS[key][0])
        probes = {"steering": steer[key]} if steer.get(key) is not None else {}
        fid = base.fidelity.model_copy(update={"logit_correlation": logit.get(key) if isinstance(logit, dict) else logit})
        rnd = key in random
        models.append(base.model_copy(update={
            "name": name, "backbone": name, "target": target, "is_as_ratio": ratios[key], "probes": probes, "fidelity": fid,
            "random_weights": rnd, "random_weights_parts": [f"backbone {name}"] if rnd else [],
            "assessed": key not in not_assessed,
            "not_assessed_reasons": ["0 of 16 classes have ≥ 10 images"] if key in not_assessed else [],
        }))
    if extra_target:
        models.append(models[0].model_copy(update={"target": "clip"}))
    return sample_result().model_copy(update={"models": models, "random_weights": any(m.random_weights for m in models)})


def statuses(report: dict) -> dict[str, str]:
    return {c["id"]: c["status"] for c in report["claims"]}


def write(tmp_path: Path, result) -> Path:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "results.json").write_text(result.model_dump_json(), encoding="utf-8")
    return run


def test_every_claim_held_exits_0(tmp_path, capsys):
    report = check_claims(paper_result())
    assert statuses(report) == {"ratio_order": "held", "steering": "held", "logit_correlation": "held"}
    assert report["stamp"] is None and exit_code(report) == 0
    assert main(["check-claims", str(write(tmp_path, paper_result()))]) == 0
    out = capsys.readouterr().out
    assert out.count("[HELD]") == 3 and "RANDOM WEIGHTS" not in out
    assert "3 held, 0 not held, 0 not measurable" in out


def test_ratio_order_not_held_when_another_model_is_highest_or_lowest(tmp_path, capsys):
    report = check_claims(paper_result(ratios={"bit_resnetv2": 3.5}))
    claim = report["claims"][0]
    assert claim["status"] == "not held" and claim["measured"] == {"highest": "BiT ResNet-v2", "lowest": "ResNeXt-101"}
    assert statuses(check_claims(paper_result(ratios={"resnet50": 0.5})))["ratio_order"] == "not held"
    assert main(["check-claims", str(write(tmp_path, paper_result(ratios={"resnet50": 0.5})))]) == 1
    assert "[NOT HELD] ratio_order" in capsys.readouterr().out


def test_ratio_order_not_measurable_without_a_ratio():
    claim = check_claims(paper_result(ratios={"efficientnet_b4": None}))["claims"][0]
    assert claim["status"] == "not measurable" and claim["measured"] is None
    assert any("EfficientNet-B4" in r and "undefined" in r for r in claim["reasons"])


def test_steering_tolerance_combines_the_papers_spread_and_the_runs_standard_error():
    # one target of 100 images with σ 1: standard error 0.1, tolerance 3·sqrt(0.25² + 0.1²)
    tol = STEERING_SIGMAS * math.hypot(0.25, 0.1)
    inside = check_claims(paper_result(steer={"resnet50": steering((12.04 + tol - 0.01, 1.0, 100))}))
    outside = check_claims(paper_result(steer={"resnet50": steering((12.04 + tol + 0.01, 1.0, 100))}))
    assert statuses(inside)["steering"] == "held" and statuses(outside)["steering"] == "not held"
    fig = outside["claims"][1]["figures"]["ResNet-50"]
    assert fig["se"] == pytest.approx(0.1, rel=1e-12) and fig["tolerance"] == pytest.approx(tol, rel=1e-12)
    assert fig["within"] is False


def test_steering_reads_the_magnitude_averaged_over_the_pairs():
    # |−13| and |11| average to 12, the standard error of the mean of two pairs is sqrt(2·0.1²)/2
    report = check_claims(paper_result(steer={"resnet50": steering((-13.0, 1.0, 100), (11.0, 1.0, 100))}))
    fig = report["claims"][1]["figures"]["ResNet-50"]
    assert fig["as_abs"] == pytest.approx(12.0) and fig["se"] == pytest.approx(math.sqrt(2 * 0.01) / 2)
    assert statuses(report)["steering"] == "held"


def test_steering_not_held_when_dino_vit_steers_as_far_as_resnet50():
    # both within a wide tolerance (σ 40 over 4 images: standard error 20), but the order is the claim's core
    wide = steering((6.0, 40.0, 4))
    report = check_claims(paper_result(steer={"resnet50": steering((5.0, 40.0, 4)), "dino_vit": wide}))
    assert statuses(report)["steering"] == "not held"
    assert report["claims"][1]["figures"]["ResNet-50 above DINO ViT"] is False


def test_steering_not_measurable_without_the_probe_or_its_targets():
    report = check_claims(paper_result(steer={"dino_vit": None}))
    assert statuses(report)["steering"] == "not measurable"
    assert any("steering probe did not run" in r for r in report["claims"][1]["reasons"])
    empty = {"probe": "steering", "epsilon_mode": "relative", "targets": [], "note": "no null space: nothing to steer"}
    report = check_claims(paper_result(steer={"resnet50": empty}))
    assert statuses(report)["steering"] == "not measurable"
    assert any("no null space" in r for r in report["claims"][1]["reasons"])


def test_logit_correlation_holds_down_to_the_margin_and_not_below():
    floor = PAPER_LOGIT_CORRELATION - LOGIT_CORRELATION_MARGIN
    assert statuses(check_claims(paper_result(logit=floor + 0.001)))["logit_correlation"] == "held"
    assert statuses(check_claims(paper_result(logit=0.999)))["logit_correlation"] == "held"  # more faithful: no contradiction
    low = check_claims(paper_result(logit=floor - 0.001))
    assert statuses(low)["logit_correlation"] == "not held"
    assert low["claims"][2]["measured"] == pytest.approx(floor - 0.001)
    # the mean over the five models is what is compared
    mixed = {k: 0.99 for k in PAPER_MODELS} | {"resnext101": 0.90}
    assert check_claims(paper_result(logit=mixed))["claims"][2]["measured"] == pytest.approx((4 * 0.99 + 0.90) / 5)


def test_logit_correlation_not_measurable_in_a_result_without_it():
    report = check_claims(paper_result(logit=None))
    assert statuses(report)["logit_correlation"] == "not measurable"
    assert any("schema 1.3" in r for r in report["claims"][2]["reasons"])


def test_a_missing_model_makes_its_claims_not_measurable_and_the_check_fail_unless_allowed(tmp_path, capsys):
    run = write(tmp_path, paper_result(drop=("resnext101",)))
    report = check_claims(paper_result(drop=("resnext101",)))
    assert statuses(report) == {"ratio_order": "not measurable", "steering": "held", "logit_correlation": "not measurable"}
    assert any("no model named 'resnext101'" in r for r in report["claims"][0]["reasons"])
    assert main(["check-claims", str(run)]) == 1
    assert main(["check-claims", str(run), "--allow-not-measurable"]) == 0
    # a model named otherwise is found through --model
    renamed = write(tmp_path, paper_result(names={"resnext101": "rx"}))
    capsys.readouterr()
    assert main(["check-claims", str(renamed), "--model", "resnext101=rx", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["models"]["resnext101"] == "rx" and data["exit_code"] == 0


def test_random_weights_are_not_measurable_and_stamped(tmp_path, capsys):
    everything = tuple(PAPER_MODELS)
    report = check_claims(paper_result(random=everything, ratios={"resnet50": 9.0}))
    # a ratio order the paper contradicts is still not a failed check: random numbers prove nothing
    assert set(statuses(report).values()) == {"not measurable"}
    assert report["random_weights"] and report["stamp"].startswith(RANDOM_STAMP)
    assert report["claims"][0]["measured"] == {"highest": "ResNet-50", "lowest": "ResNeXt-101"}  # shown, not judged
    run = write(tmp_path, paper_result(random=everything))
    # nothing measured is never a pass, not even when not-measurable claims are allowed
    assert main(["check-claims", str(run), "--allow-not-measurable"]) == 1
    capsys.readouterr()
    assert main(["check-claims", str(run)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(RANDOM_STAMP) and out.rstrip().endswith(RANDOM_STAMP)
    assert "nothing was checked" in out and out.count("[NOT MEASURABLE]") == 3
    assert main(["check-claims", str(run), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["exit_code"] == 1 and data["random_weights"] is True and RANDOM_STAMP in data["stamp"]
    # one random model: only the claims that read it are not measurable
    one = check_claims(paper_result(random=("efficientnet_b4",)))
    assert statuses(one) == {"ratio_order": "not measurable", "steering": "held", "logit_correlation": "not measurable"}
    assert one["stamp"] is not None


def test_a_model_not_assessed_is_not_measurable():
    report = check_claims(paper_result(not_assessed=("dino_vit",)))
    assert set(statuses(report).values()) == {"not measurable"}
    assert any("not assessed" in r and "16 classes" in r for r in report["claims"][1]["reasons"])


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["check-claims", str(tmp_path / "nowhere")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["check-claims", str(empty)]) == 2
    assert "no results.json" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json", encoding="utf-8")
    assert main(["check-claims", str(bad)]) == 2
    (bad / "results.json").write_text(json.dumps({"schema_version": "0.9", "models": []}), encoding="utf-8")
    assert main(["check-claims", str(bad)]) == 2
    assert "schema version 0.9" in capsys.readouterr().err
    (bad / "results.json").write_text(json.dumps({"schema_version": "1.3", "models": "five"}), encoding="utf-8")
    assert main(["check-claims", str(bad)]) == 2
    good = write(tmp_path, paper_result())
    assert main(["check-claims", str(good), "--model", "resnet=r50"]) == 2
    assert "no paper model 'resnet'" in capsys.readouterr().err
    assert main(["check-claims", str(good), "--model", "resnet50"]) == 2
    assert main(["check-claims", str(good), "--target", "clip"]) == 2


def test_several_targets_need_target(tmp_path, capsys):
    run = write(tmp_path, paper_result(extra_target=True))
    assert main(["check-claims", str(run)]) == 2
    assert "--target" in capsys.readouterr().err
    assert main(["check-claims", str(run), "--target", "karlo"]) == 0
