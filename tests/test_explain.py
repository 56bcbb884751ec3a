"""sing-audit explain: one image under an audit."""

from __future__ import annotations

import json

import pytest

from sing_audit.cli import main
from sing_audit.pipeline.explain import explain_image


def test_dataset_image_matches_its_row_in_the_audit(synthetic_config, tmp_path, capsys):
    cfg = synthetic_config(policy={"max_flagged": 5})
    assert main(["run", str(cfg)]) == 0
    rows = (tmp_path / "out" / "models" / "leaky__clip" / "images.csv").read_text().splitlines()
    header = rows[0].split(",")
    row = dict(zip(header, rows[1 + 301].split(","), strict=True))
    r = explain_image(cfg, row["image_id"], model="leaky")
    assert r.source == "dataset" and r.class_name == "sports car" and r.label_source == "labels"
    assert r.image_score == pytest.approx(float(row["is"]), abs=1e-9)
    assert r.attribute_score == pytest.approx(float(row["as"]), abs=1e-9)
    assert r.top_classes[0].name == "sports car"
    assert f"held-out fold {row['fold']}" in r.translator
    capsys.readouterr()
    assert main(["explain", row["image_id"], "--config", str(cfg), "--model", "leaky", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["class_name"] == "sports car"


def test_given_label_and_steering(synthetic_config):
    probes = ["null_removal", {"plugin": "steering", "classes": ["daisy"]}]
    cfg = synthetic_config(probes=probes)
    r = explain_image(cfg, "img00000", model="leaky", label="jellyfish")
    assert r.class_name == "jellyfish" and r.label_source == "given"
    (row,) = r.probes["steering"]["targets"]
    assert row["prompt"] == "daisy" and row["as_mean"] > 0


def test_bad_requests_exit_2(synthetic_config, capsys):
    cfg = synthetic_config()
    assert main(["explain", "nope.png", "--config", str(cfg)]) == 2
    assert "neither one of the audit's images nor a file" in capsys.readouterr().err
    assert main(["explain", "img00000", "--config", str(cfg), "--label", "sportscar"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["explain", "img00000", "--config", str(cfg), "--model", "leakyy"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_new_image_file_through_the_models(tmp_path):
    from sing_audit.synthetic import SYNSETS, write_image_folder

    from .conftest import image_folder_audit

    cfg = image_folder_audit(tmp_path, [{"name": "r18", "plugin": "timm", "model": "resnet18", "weights": "random", "img_size": 32}])
    root = tmp_path / "val"
    new = write_image_folder(tmp_path / "new", per_class=1, size=32, seed=7) / SYNSETS[0] / f"{SYNSETS[0]}_0.png"
    r = explain_image(cfg, str(new))
    assert r.source == "file" and r.label_source == "predicted" and r.random_weights
    assert "mean of the 2 fold translators" in r.translator
    assert r.image_score == 0.0  # resnet18: 512 features, 1000 classes, no null space
    same = explain_image(cfg, str(root / SYNSETS[1] / f"{SYNSETS[1]}_2.png"))
    assert same.source == "dataset" and same.class_name == "goldfish"
