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
    # R18 names its classes (tench, ...): the synset folders map through class_map, as the run needs
    class_map = {"n01440764": 0, "n01443537": 1, "n01484850": 2}
    return image_folder_audit(tmp_path, [R18], dataset={"class_map": class_map}, target={"plugin": "open_clip", "weights": "random", "image_size": 32, **target})


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


# --------------------------------------------------------------------------- offline pretrained weights


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub access, and an empty hub cache, so nothing on this machine is found by accident."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("command", ["validate", "run"])
def test_uncached_pretrained_offline_fails_in_the_preflight(tmp_path, capsys, no_model_loads, offline, command):
    import time

    cfg = _audit(tmp_path, model="ViT-B-32", weights="pretrained")
    start = time.monotonic()
    assert main([command, str(cfg)]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.count("not on this machine") == 1
    assert f"{cfg}: target.weights: the pretrained weights of open_clip model 'ViT-B-32' (tag 'openai') " in err
    assert "hf download timm/vit_base_patch32_clip_224.openai open_clip_pytorch_model.bin" in err
    assert "model: ViT-B-32-quickgelu" in err and "weights: random" in err
    assert not (tmp_path / "out").exists()


def test_uncached_tag_and_hub_model_offline(offline):
    from sing_audit.errors import WeightsError

    with pytest.raises(WeightsError, match=r"laion/CLIP-ViT-B-32-laion2B-s34B-b79K open_clip_pytorch_model\.bin, "
                       r"and set weights: <that file>;") as err:
        OpenClipTarget({"model": "ViT-B-32", "weights": "laion2b_s34b_b79k"}).check()
    assert err.value.field == "weights"
    with pytest.raises(WeightsError, match="revision .main. of hub repository .org/clip.*not in the local hub cache.*`hf download org/clip`"):
        OpenClipTarget({"model": "hf-hub:org/clip"}).check()


def test_cached_pretrained_passes_the_preflight_offline(offline):
    snapshot = offline / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"")
    (offline / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "refs").mkdir()
    (offline / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "refs" / "main").write_text("0" * 40)
    OpenClipTarget({"model": "ViT-B-32", "weights": "laion2b_s34b_b79k"}).check()


def test_online_pretrained_is_not_looked_up(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("sing_audit_open_clip.target.check_cached", lambda *a: pytest.fail("looked up online"))
    OpenClipTarget({"model": "ViT-B-32"}).check()
