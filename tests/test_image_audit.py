"""Audits over a generated image folder with random-init real architectures (timm, open_clip)."""

from __future__ import annotations

import json

import pytest

from sing_audit.cli import main
from sing_audit.synthetic import SYNSETS, write_image_folder

from .conftest import write_config


def _results(out) -> dict:
    return json.loads((out / "results.json").read_text())


TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A real open_clip CLIP architecture, shrunk: registered like a user's own config."""
    import open_clip

    path = tmp_path_factory.mktemp("clipcfg") / "sing-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(path)
    return "sing-tiny-clip"


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images") / "val", per_class=4, size=40)


@pytest.mark.slow
def test_two_timm_backbones_and_open_clip_end_to_end_then_cache(tmp_path, image_root, tiny_clip, monkeypatch):
    cfg = write_config(
        tmp_path,
        {
            "output": "out",
            "dataset": {"plugin": "image_folder", "root": str(image_root)},
            "target": {"plugin": "open_clip", "name": "clip", "model": tiny_clip, "weights": "random"},
            "backbones": [
                {"name": "r50", "plugin": "timm", "model": "resnet50", "weights": "random", "img_size": 64},
                {"name": "vit", "plugin": "timm", "model": "vit_tiny_patch16_224", "weights": "random", "img_size": 32},
            ],
            "run": {"device": "cpu", "batch_size": 8, "folds": 3, "bootstrap": 100},
        },
    )
    # 4 images per class judge no class, and ViT-Ti has no null space: nothing is assessed,
    # so the run does not pass (exit 1) — the pipeline check example allows it explicitly
    assert main(["run", str(cfg)]) == 1
    first = _results(tmp_path / "out")
    assert first["random_weights"] is True and first["passed"] is False and first["assessed"] is False
    by_name = {m["name"]: m for m in first["models"]}
    assert set(by_name) == {"r50", "vit"}
    assert by_name["r50"]["null_dim"] == 2048 - 1000 and by_name["vit"]["null_dim"] == 0
    assert by_name["vit"]["is_as_ratio"] is None
    for m in first["models"]:
        assert m["random_weights"] is True and m["n_images"] == 12 and m["labels_source"] == "labels"
        assert {c["name"] for c in m["classes"]} == {"tench", "goldfish", "great white shark"}
        assert m["logit_drift"]["relative_max"] < 1e-6
        assert m["assessed"] is False and "0 of 3 classes have ≥ 10 images" in m["not_assessed_reasons"]
    assert any("null dimension 0" in r for r in by_name["vit"]["not_assessed_reasons"])
    assert "RANDOM WEIGHTS" in (tmp_path / "out" / "report.html").read_text()

    # a rerun with nothing changed builds no model at all
    from sing_audit_open_clip import target as open_clip_target
    from sing_audit_timm import backbone as timm_backbone

    def no_load(self, device):
        raise AssertionError("model loaded although everything is cached")

    monkeypatch.setattr(timm_backbone.TimmBackbone, "load", no_load)
    monkeypatch.setattr(open_clip_target.OpenClipTarget, "load", no_load)
    assert main(["run", str(cfg)]) == 1
    second = _results(tmp_path / "out")
    assert [m["classes"] for m in second["models"]] == [m["classes"] for m in first["models"]]
    assert second["random_weights"] is True


def _mixed_config(tmp_path, root, on_bad_image):
    """timm backbone on images + a precomputed target aligned by image ids."""
    from .conftest import image_folder_audit

    r18 = {"name": "r18", "plugin": "timm", "model": "resnet18", "weights": "random", "img_size": 32}
    return image_folder_audit(tmp_path, [r18], root=root, dataset={"on_bad_image": on_bad_image})


@pytest.fixture
def corrupt_root(tmp_path):
    root = write_image_folder(tmp_path / "val", per_class=4, size=32)
    (root / SYNSETS[1] / f"{SYNSETS[1]}_2.png").write_bytes(b"\x89PNG broken")
    return root


def test_corrupt_image_is_fatal_by_default(tmp_path, corrupt_root, capsys):
    assert main(["run", str(_mixed_config(tmp_path, corrupt_root, "fail"))]) == 2
    err = capsys.readouterr().err
    assert f"{SYNSETS[1]}_2.png" in err and "on_bad_image" in err


def test_corrupt_image_is_skipped_and_counted(tmp_path, corrupt_root):
    assert main(["run", str(_mixed_config(tmp_path, corrupt_root, "skip"))]) == 0
    res = _results(tmp_path / "out")
    assert res["provenance"]["skipped_images"] == [f"{SYNSETS[1]}/{SYNSETS[1]}_2.png"]
    assert res["models"][0]["n_images"] == 11
    top = res["models"][0]["top_images"]
    assert len(top) == 11  # report.top_images (12) capped by the images audited
    from PIL import Image

    for t in top:
        assert t["thumbnail"].startswith("thumbnails/")
        with Image.open(tmp_path / "out" / t["thumbnail"]) as img:
            assert max(img.size) <= 112


def test_missing_dataset_root(tmp_path, capsys):
    cfg = _mixed_config(tmp_path, tmp_path / "nowhere", "fail")
    assert main(["run", str(cfg)]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_pretrained_weights_offline_is_bad_input_not_a_fallback(tmp_path, image_root, capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = _mixed_config(tmp_path, image_root, "fail")
    assert main(["run", str(cfg), "-o", "backbones.0.weights=pretrained"]) == 2
    assert "weights" in capsys.readouterr().err.lower()


def test_corrupt_cached_features_are_recomputed(tmp_path, image_root):
    cfg = _mixed_config(tmp_path, image_root, "fail")
    assert main(["run", str(cfg)]) == 0
    before = _results(tmp_path / "out")["models"][0]["classes"]
    values = next((tmp_path / "out" / "cache" / "features").glob("*/values.npy"))
    data = bytearray(values.read_bytes())
    data[-5] ^= 0xFF
    values.write_bytes(bytes(data))
    assert main(["run", str(cfg)]) == 0
    assert _results(tmp_path / "out")["models"][0]["classes"] == before


def test_head_that_is_not_affine_is_refused(tmp_path, image_root, monkeypatch, capsys):
    """A cosine classifier normalises its input: features @ W + b no longer give the logits."""
    import torch

    from sing_audit_timm import backbone as timm_backbone

    def cosine_logits(self, x):
        f = torch.nn.functional.normalize(self.features(x), dim=-1)
        return f @ self.model.get_classifier().weight.T

    monkeypatch.setattr(timm_backbone.TimmBackbone, "logits", cosine_logits)
    assert main(["run", str(_mixed_config(tmp_path, image_root, "fail"))]) == 2
    err = capsys.readouterr().err
    assert "not a plain affine map" in err and "r18" in err
