"""``validate`` and ``run`` refuse a misspelt open_clip model or tag before anything loads."""

from __future__ import annotations

import pytest

from sing_audit.cli import main
from sing_audit.testing import image_folder_audit
from sing_audit_open_clip.target import OpenClipTarget

R18 = {"name": "r18", "plugin": "torch_module", "model": "torchvision.models:resnet18", "head": "fc",
       "kwargs": {"weights": None, "num_classes": 3}, "weights": "random", "img_size": 32,
       "class_names": ["tench", "goldfish", "great white shark"]}


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(self, device="cpu"):
        raise AssertionError("a model was loaded before the pre-flight failed")

    monkeypatch.setattr(OpenClipTarget, "load", refuse)
    monkeypatch.setattr("sing_audit.builtins.torch_module.TorchModuleBackbone.load", refuse)


def _audit(tmp_path, **target):
    return image_folder_audit(tmp_path, [R18], target={"plugin": "open_clip", "weights": "random", "image_size": 32, **target})


@pytest.mark.parametrize("command", ["validate", "run"])
def test_misspelt_model_name_suggests_the_right_one(tmp_path, capsys, no_model_loads, command):
    cfg = _audit(tmp_path, model="ViT-B32")
    assert main([command, str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"{cfg}: target.model: open_clip has no model named 'ViT-B32'; did you mean ViT-B-32" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["validate", "run"])
def test_unknown_tag_lists_known_ones(tmp_path, capsys, no_model_loads, command):
    cfg = _audit(tmp_path, model="ViT-B-32", weights="openai2")
    assert main([command, str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{cfg}: target.weights: open_clip model 'ViT-B-32' has no pretrained tag 'openai2' (known tags: openai)" in err


def test_missing_weights_file(tmp_path, capsys, no_model_loads):
    cfg = _audit(tmp_path, model="ViT-B-32", weights="clip.safetensors")
    assert main(["validate", str(cfg)]) == 2
    assert f"{cfg}: target.weights: weights file not found: " in capsys.readouterr().err


def test_a_known_model_validates(tmp_path, capsys, no_model_loads):
    assert main(["validate", str(_audit(tmp_path, model="ViT-B-32"))]) == 0
    assert "valid" in capsys.readouterr().out
