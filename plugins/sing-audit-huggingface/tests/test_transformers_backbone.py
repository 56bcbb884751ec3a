"""Hugging Face image classifiers (``transformers``): features are the classifier's real
input, captured by a forward pre-hook (the core's hooked-head backbone).

Everything is built at random init without a network: tiny transformers models built
from a config and saved with ``save_pretrained`` beside their image processors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sing_audit.errors import ConfigError, DataError, WeightsError
from sing_audit.pipeline.extraction import check_head_reproduces_logits
from sing_audit.testing import check_backbone
from sing_audit.weights import file_digest, state_dict_digest

SIZE = 32
NAMES = ["tench", "goldfish", "great white shark"]


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _gap(b, x) -> float:
    head = b.head()
    f = b.features(x).double().numpy()
    logits = b.logits(x).double().numpy()
    assert f.shape == (x.shape[0], head.num_features) and logits.shape == (x.shape[0], head.num_classes)
    return float(np.abs(f @ head.weight.T + head.bias - logits).max() / np.abs(logits).max())


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """Tiny ViT and ResNet classifiers from configs, saved with save_pretrained beside their processors."""
    pytest.importorskip("transformers", reason="the transformers backbone needs `pip install transformers`")
    from transformers import (
        AutoModelForImageClassification,
        ConvNextImageProcessor,
        ResNetConfig,
        ViTConfig,
        ViTImageProcessor,
    )

    labels = {"id2label": dict(enumerate(NAMES)), "label2id": {n: i for i, n in enumerate(NAMES)}}
    root = tmp_path_factory.mktemp("hf")
    out = {}
    configs = {
        "vit": (ViTConfig(image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=37, num_labels=3, **labels),
                ViTImageProcessor(size={"height": SIZE, "width": SIZE})),
        "resnet": (ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3, **labels),
                   ConvNextImageProcessor(size={"shortest_edge": SIZE}, crop_pct=0.875)),
    }
    for key, (config, processor) in configs.items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForImageClassification.from_config(config).eval()
        folder = root / key
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        out[key] = (folder, model)
    return out


def _hf(**options):
    from sing_audit_huggingface.transformers_backbone import TransformersBackbone

    return TransformersBackbone(TransformersBackbone.Options(**options))


def _hf_reference(key, model, x):
    with torch.no_grad():
        if key == "vit":  # ViTForImageClassification: classifier(sequence_output[:, 0]) after the final layernorm
            return model.vit(pixel_values=x).last_hidden_state[:, 0]
        return model.resnet(pixel_values=x).pooler_output.flatten(1)


@pytest.mark.parametrize("key", ["vit", "resnet"])
def test_transformers_from_a_local_folder(key, hf_models, images):
    folder, model = hf_models[key]
    b = _hf(model=str(folder))
    assert b.declared_feature_dim() == (32 if key == "vit" else 16)  # before load, from config.json on meta
    d = b.describe()
    assert json.loads(json.dumps(d)) == d and b.model is None
    assert d["plugin"] == "transformers" and d["weights"]["kind"] == "pretrained" and d["weights_digest"] is None
    assert d["files"]["model.safetensors"] == file_digest(folder / "model.safetensors")
    b.load("cpu")
    assert b.random_weights is False and b.head_path == "classifier"
    head = b.head()
    assert head.weight.shape == (3, 32 if key == "vit" else 16)
    assert head.class_names == NAMES
    torch.testing.assert_close(b.features(images), _hf_reference(key, model, images))
    with torch.no_grad():
        torch.testing.assert_close(b.logits(images), model(pixel_values=images).logits)
    assert _gap(b, images) < 1e-5
    check_head_reproduces_logits(b.features, b.logits, head.weight, head.bias, key)(images)
    check_backbone(b, images, head_module=b.head_module)


def test_transformers_preprocessing_is_the_processors(hf_models):
    from PIL import Image
    from transformers import AutoImageProcessor

    folder, _ = hf_models["resnet"]
    b = _hf(model=str(folder))
    img = Image.new("RGB", (50, 41), (200, 10, 30))
    x = b.transform()(img)
    assert tuple(x.shape) == (3, SIZE, SIZE)
    torch.testing.assert_close(x, AutoImageProcessor.from_pretrained(folder)(images=img, return_tensors="pt")["pixel_values"][0])
    assert b.describe()["preprocessing"]["crop_pct"] == 0.875


def test_transformers_random_and_file_weights(hf_models, images, tmp_path):
    folder, model = hf_models["vit"]
    r = _hf(model=str(folder), weights="random", seed=3)
    r.load("cpu")
    again = _hf(model=str(folder), weights="random", seed=3)
    again.load("cpu")
    assert r.random_weights is True and r.describe()["random_weights"] is True
    assert r.weights_digest == again.weights_digest != state_dict_digest(model)
    save_file({k: v.contiguous() for k, v in r.model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    f = _hf(model=str(folder), weights=str(tmp_path / "w.safetensors"))
    f.load("cpu")
    assert f.random_weights is False
    torch.testing.assert_close(f.logits(images), r.logits(images), rtol=0, atol=0)
    other_folder, _ = hf_models["resnet"]
    with pytest.raises(WeightsError, match="do not match"):
        _hf(model=str(other_folder), weights=str(tmp_path / "w.safetensors")).load("cpu")


def test_transformers_missing_processor_config(hf_models, tmp_path):
    _folder, model = hf_models["vit"]
    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(DataError, match="preprocessor_config.json"):
        _hf(model=str(tmp_path / "bare"))
    with pytest.raises(WeightsError, match="not found"):
        _hf(model=str(tmp_path / "nowhere" / "model")).describe()


def test_transformers_hub_id_offline_is_an_error(monkeypatch):
    pytest.importorskip("transformers")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="offline.*save_pretrained"):
        _hf(model="sing-audit-test/no-such-image-classifier")
    with pytest.raises(WeightsError, match="offline.*save_pretrained"):
        _hf(model="sing-audit-test/no-such-image-classifier", weights="random")


def test_transformers_head_option(hf_models, images):
    folder, _ = hf_models["resnet"]
    b = _hf(model=str(folder), head="classifier.1")  # the Linear after the Flatten
    b.load("cpu")
    assert _gap(b, images) < 1e-5
    torch.testing.assert_close(b.features(images), _hf_reference("resnet", hf_models["resnet"][1], images))
    with pytest.raises(ConfigError, match="no module"):
        _hf(model=str(folder), head="clasifier").load("cpu")


def test_registered_name():
    from sing_audit.host import create_registry
    from sing_audit_huggingface.transformers_backbone import TransformersBackbone

    assert create_registry().get("backbone", "transformers").factory is TransformersBackbone


def test_torch_module_and_transformers_end_to_end(tmp_path, hf_models):
    """One audit, two backbones (a hand-written CNN and a tiny transformers ViT), precomputed target."""
    from sing_audit.cli import main
    from sing_audit.synthetic import SYNSETS, write_image_folder

    from sing_audit.testing import PIPELINE_POLICY, write_config

    root = write_image_folder(tmp_path / "val", per_class=4, size=40)
    ids = [f"{s}/{s}_{i}.png" for s in SYNSETS for i in range(4)]
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", image_embeddings=rng.normal(size=(len(ids), 8)).astype(np.float32),
             text_embeddings=rng.normal(size=(3, 8)).astype(np.float32), image_ids=np.array(ids))
    cfg = write_config(tmp_path, {
        "output": "out",
        "dataset": {"plugin": "image_folder", "root": str(root), "class_map": {s: i for i, s in enumerate(SYNSETS)}},
        "target": {"plugin": "precomputed", "path": "t.npz"},
        "backbones": [
            {"name": "cnn", "plugin": "torch_module", "model": "unclip_fixtures:tiny_cnn", "kwargs": {"width": 16},
             "head": "head", "weights": "random", "img_size": SIZE, "class_names": NAMES},
            {"name": "hfvit", "plugin": "transformers", "model": str(hf_models["vit"][0])},
        ],
        "policy": PIPELINE_POLICY,
        "run": {"device": "cpu", "folds": 2, "bootstrap": 100},
        "report": {"formats": ["json"]},
    })
    assert main(["run", str(cfg)]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    by_name = {m["name"]: m for m in res["models"]}
    assert by_name["cnn"]["random_weights"] is True and by_name["hfvit"]["random_weights"] is False
    assert by_name["cnn"]["null_dim"] == 16 - 3 and by_name["hfvit"]["null_dim"] == 32 - 3
    for m in by_name.values():
        assert m["n_images"] == 12 and m["logit_drift"]["relative_max"] < 1e-6
        assert {c["name"] for c in m["classes"]} == set(NAMES)


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_refuses_a_model_folder_without_config_before_building(command, tmp_path, capsys, monkeypatch):
    from sing_audit.cli import main
    from sing_audit.testing import image_folder_audit
    from sing_audit_huggingface.transformers_backbone import TransformersBackbone

    def no_load(self, device="cpu"):
        raise AssertionError("load() reached although the pre-flight should have failed")

    monkeypatch.setattr(TransformersBackbone, "load", no_load)
    (tmp_path / "model").mkdir()
    cfg = image_folder_audit(tmp_path, [{"name": "vit", "plugin": "transformers", "model": "model"}])
    assert main([command, str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"{cfg}: backbones[0].model: the model folder " in err and "has no config.json" in err
    assert not (tmp_path / "out").exists()


def _config_folder(folder, id2label):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "id2label": id2label}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "ViTImageProcessor"}))
    return folder


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_refuses_a_label_of_no_class_in_config_json_before_building(command, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from sing_audit.cli import main
    from sing_audit.testing import image_folder_audit
    from sing_audit_huggingface.transformers_backbone import TransformersBackbone

    def no_load(self, device="cpu"):
        raise AssertionError("load() reached although the pre-flight should have failed")

    monkeypatch.setattr(TransformersBackbone, "load", no_load)
    _config_folder(tmp_path / "model", {"0": "cat", "1": "dog"})
    for name in ("cat", "my_widget"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / name / "a.png")
    backbone = {"name": "vit", "plugin": "transformers", "model": "model", "weights": "random"}
    cfg = image_folder_audit(tmp_path, [backbone], dataset={"root": "imgs"})
    assert main([command, str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"{cfg}: dataset: 1 dataset label(s) do not match the head's class names: 'my_widget'" in err
    assert "backbones[0] 'vit': 2 classes" in err


def test_declared_classes_from_config_json(tmp_path):
    from sing_audit.imagenet import imagenet_class_info
    from sing_audit_huggingface.transformers_backbone import TransformersBackbone

    named = _config_folder(tmp_path / "a", {"0": "tabby, tabby cat", "1": "dog"})
    assert TransformersBackbone({"model": str(named), "weights": "random"}).declared_classes() == (2, ["tabby", "dog"], None)
    generic = _config_folder(tmp_path / "b", {str(i): f"LABEL_{i}" for i in range(1000)})
    keys, names = imagenet_class_info(1000)
    assert TransformersBackbone({"model": str(generic), "weights": "random"}).declared_classes() == (1000, list(names), list(keys))
    assert TransformersBackbone({"model": str(named), "weights": "random", "head": "classifier"}).declared_classes() is None


# --------------------------------------------------------------------------- hub revisions


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, hf_models):
    """HF_HOME in tmp_path, offline, whose hub cache holds ``someone/tiny-vit`` at two commits
    (main -> "1"*40, tag v2 -> "2"*40): the saved ViT, and the same ViT with another head bias."""
    import shutil

    import huggingface_hub.constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    folder, model = hf_models["vit"]
    repo = cache / "models--someone--tiny-vit"
    shutil.copytree(folder, repo / "snapshots" / ("1" * 40))
    shutil.copytree(folder, repo / "snapshots" / ("2" * 40))
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd["classifier.bias"] = sd["classifier.bias"] + 1.0
    save_file(sd, str(repo / "snapshots" / ("2" * 40) / "model.safetensors"), metadata={"format": "pt"})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("1" * 40)
    (repo / "refs" / "v2").write_text("2" * 40)
    return repo, model


@pytest.mark.parametrize("revision, commit", [(None, "1" * 40), ("v2", "2" * 40), ("2" * 40, "2" * 40)])
def test_transformers_revision_resolves_offline_to_its_commit(revision, commit, hub_cache, images):
    from sing_audit.store import content_key

    _, model = hub_cache
    b = _hf(model="someone/tiny-vit", revision=revision)
    before = b.describe()
    assert before["hub_revision"] == {"repo": "someone/tiny-vit", "revision": revision or "main", "commit": commit}
    b.load("cpu")
    with torch.no_grad():
        reference = model(pixel_values=images).logits
    shift = 1.0 if commit == "2" * 40 else 0.0  # the v2 snapshot's head bias is one more
    torch.testing.assert_close(b.logits(images), reference + shift)
    other = _hf(model="someone/tiny-vit", revision="v2" if commit == "1" * 40 else None).describe()
    assert content_key(other) != content_key(before)


def test_transformers_uncached_revision_is_a_clear_error(hub_cache):
    with pytest.raises(WeightsError) as err:
        _hf(model="someone/tiny-vit", revision="v3")
    msg = str(err.value)
    assert "'v3'" in msg and "hf download someone/tiny-vit --revision v3" in msg and "save_pretrained" in msg
