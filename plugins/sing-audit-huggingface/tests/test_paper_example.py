"""examples/paper/audit.yaml, the committed config of the SING paper's analysis, offline:
it validates with every model at ``weights: random`` (the paper's sizes), runs end to end
shrunk by overrides (32 px inputs, 2 images of each of its 16 classes, a tiny random
Karlo), and ``sing-audit check-claims`` reads the run: every claim not measurable, each
with its measured value, and random weights stamped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("timm")
pytest.importorskip("sing_audit_timm")

from unclip_fixtures import build_tiny_karlo  # noqa: E402

from sing_audit.builtins.paper_claims import PAPER_MODELS, RANDOM_STAMP  # noqa: E402
from sing_audit.cli import main  # noqa: E402

CONFIG = Path(__file__).resolve().parents[3] / "examples" / "paper" / "audit.yaml"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """A tiny random Karlo and an ImageNet-val-shaped folder: the config's 16 synset folders
    of 2 images each, and one more class the config must leave out."""
    from PIL import Image

    root = tmp_path_factory.mktemp("paper")
    classes = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["dataset"]["classes"]
    rng = np.random.default_rng(0)
    for synset in [*classes, "n09999999"]:
        folder = root / "val" / synset
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"ILSVRC2012_val_{i}.JPEG")
    return {"root": root, "karlo": build_tiny_karlo(root / "karlo"), "classes": classes}


def random_weights(inputs: dict) -> list[str]:
    """Overrides that keep the config as committed but for random weights and local inputs."""
    args = ["-o", f"dataset.root={inputs['root'] / 'val'}", "-o", f"target.model={inputs['karlo']}",
            "-o", "target.weights=random", "-o", "backbones.0.head=random"]
    for i in range(len(PAPER_MODELS)):
        args += ["-o", f"backbones.{i}.weights=random"]
    return args


@pytest.mark.slow
def test_the_paper_config_validates_runs_and_its_claims_are_not_measurable_on_random_weights(inputs, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["validate", str(CONFIG), *random_weights(inputs)]) == 0

    run = inputs["root"] / "run"
    shrink = ["-o", f"output={run}", "-o", "run.device=cpu", "-o", "run.batch_size=32", "-o", "run.folds=2",
              "-o", "run.bootstrap=100", "-o", "report.formats=[json]", "-o", "policy.allow_not_assessed=true"]
    for i in range(len(PAPER_MODELS)):
        shrink += ["-o", f"backbones.{i}.img_size=32"]
    assert main(["-q", "run", str(CONFIG), *random_weights(inputs), *shrink]) == 0

    result = json.loads((run / "results.json").read_text(encoding="utf-8"))
    models = {m["name"]: m for m in result["models"]}
    assert set(models) == set(PAPER_MODELS) and result["random_weights"]
    for m in models.values():
        assert m["target"] == "karlo" and m["random_weights"] and m["n_images"] == 32  # the 17th class left out
        assert -1.0 <= m["fidelity"]["logit_correlation"] <= 1.0
        steering = m["probes"]["steering"]
        assert steering["epsilon_mode"] == "calibrated" and len(steering["targets"]) == 4

    capsys.readouterr()
    assert main(["check-claims", str(run)]) == 1  # nothing measured: never a pass
    out = capsys.readouterr().out
    assert out.startswith(RANDOM_STAMP) and out.count("[NOT MEASURABLE]") == 3 and "nothing was checked" in out
    assert main(["check-claims", str(run), "--allow-not-measurable"]) == 1
    capsys.readouterr()
    assert main(["check-claims", str(run), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["stamp"].startswith(RANDOM_STAMP) and report["exit_code"] == 1
    for claim in report["claims"]:
        assert claim["status"] == "not measurable" and claim["measured"] is not None  # measured, shown, not judged
        assert claim["reasons"] and all("random weights" in r for r in claim["reasons"])
