"""Generic PyTorch classifiers (``torch_module``) and Hugging Face image classifiers
(``transformers``): features are the head's real input, captured by a forward pre-hook.

Everything is built at random init without a network: torchvision's resnet18
(``weights=None``), small CNNs defined here, and tiny transformers models built from a
config and saved with ``save_pretrained``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file
from torch import nn

from sing_audit.errors import ConfigError, DataError, HeadError, WeightsError
from sing_audit.extraction import check_head_reproduces_logits
from sing_audit.builtins.torch_module import TorchModuleBackbone
from sing_audit.testing import check_backbone
from sing_audit.weights import file_digest, state_dict_digest

SIZE = 32
NAMES = ["tench", "goldfish", "great white shark"]


# --------------------------------------------------------------------------- models of the test


class SmallCNN(nn.Module):
    """A hand-written CNN whose head sits in a Sequential after flatten and dropout."""

    def __init__(self, num_classes: int = 3, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * width, num_classes))

    def forward(self, x):
        return self.head(self.pool(self.body(x)))


class ConvHeadCNN(SmallCNN):
    """BiT-style: a 1×1 convolution on the pooled map, then flatten."""

    def __init__(self, num_classes: int = 3, width: int = 8):
        super().__init__(num_classes, width)
        self.classifier = nn.Conv2d(2 * width, num_classes, 1)

    def forward(self, x):
        return self.classifier(self.pool(self.body(x))).flatten(1)


class DenseHeadCNN(SmallCNN):
    """The 1×1 convolution runs on every position before pooling: no single feature vector."""

    def __init__(self, num_classes: int = 3, width: int = 8):
        super().__init__(num_classes, width)
        self.classifier = nn.Conv2d(2 * width, num_classes, 1)

    def forward(self, x):
        return self.classifier(self.body(x)).mean((2, 3))


class ScaledLogitsCNN(SmallCNN):
    """Logits pass through a non-affine map after the head."""

    def forward(self, x):
        return torch.tanh(super().forward(x)) * 3


class TwiceCNN(SmallCNN):
    def forward(self, x):
        f = self.pool(self.body(x))
        return self.head(f) + self.head(f.flip(1))


def small_cnn(num_classes: int = 3, width: int = 8) -> nn.Module:
    return SmallCNN(num_classes, width)


def trained_cnn(num_classes: int = 3) -> nn.Module:
    """A factory that sets its own (here: fixed) weights, as torchvision does with weights=…"""
    model = SmallCNN(num_classes)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


HERE = __name__  # "tests.test_torch_module"


def _tm(**options) -> TorchModuleBackbone:
    options.setdefault("img_size", SIZE)
    return TorchModuleBackbone(TorchModuleBackbone.Options(**options))


def _loaded(**options) -> TorchModuleBackbone:
    b = _tm(**options)
    b.load("cpu")
    return b


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet18():
    return _loaded(model="torchvision.models:resnet18", kwargs={"weights": None}, head="fc", weights="random")


def _gap(b, x) -> float:
    head = b.head()
    f = b.features(x).double().numpy()
    logits = b.logits(x).double().numpy()
    assert f.shape == (x.shape[0], head.num_features) and logits.shape == (x.shape[0], head.num_classes)
    return float(np.abs(f @ head.weight.T + head.bias - logits).max() / np.abs(logits).max())


# --------------------------------------------------------------------------- torch_module


def test_torchvision_resnet18(resnet18, images):
    b = resnet18
    assert check_backbone(b, images, head_module=b.model.fc).null_dim == 0
    assert b.random_weights is True
    head = b.head()
    assert head.weight.shape == (1000, 512)
    np.testing.assert_array_equal(head.weight, b.model.fc.weight.detach().double().numpy())
    assert head.class_keys[0] == "n01440764" and head.class_names[1] == "goldfish"
    with torch.no_grad():  # the features are the pooled, flattened map resnet18 feeds to fc
        m = b.model
        x = images
        ref = torch.flatten(m.avgpool(m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))), 1)
    torch.testing.assert_close(b.features(images), ref)
    assert _gap(b, images) < 1e-5
    check_head_reproduces_logits(b.features, b.logits, head.weight, head.bias, "r18")(images)


def test_random_is_seeded_and_leaves_global_rng_alone(resnet18):
    state = torch.random.get_rng_state()
    again = _loaded(model="torchvision.models:resnet18", kwargs={"weights": None}, head="fc", weights="random")
    assert torch.equal(state, torch.random.get_rng_state())
    assert again.weights_digest == resnet18.weights_digest == state_dict_digest(resnet18.model)
    other = _loaded(model="torchvision.models:resnet18", kwargs={"weights": None}, head="fc", weights="random", seed=1)
    assert other.weights_digest != resnet18.weights_digest


def test_weights_files_round_trip(resnet18, images, tmp_path):
    sd = {k: v.detach().clone().contiguous() for k, v in resnet18.model.state_dict().items()}
    save_file(sd, str(tmp_path / "r18.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "r18.pth")
    for name in ("r18.safetensors", "r18.pth"):
        b = _loaded(model="torchvision.models:resnet18", kwargs={"weights": None}, head="fc", weights=name,
                    base_dir=tmp_path, seed=5)
        assert b.random_weights is False and b.weights_digest == file_digest(tmp_path / name)
        torch.testing.assert_close(b.logits(images), resnet18.logits(images), rtol=0, atol=0)
        torch.testing.assert_close(b.features(images), resnet18.features(images), rtol=0, atol=0)


def test_weights_file_of_another_model_is_refused(resnet18, tmp_path):
    save_file({k: v.contiguous() for k, v in resnet18.model.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    with pytest.raises(WeightsError, match="do not match"):
        _loaded(model="torchvision.models:resnet34", kwargs={"weights": None}, head="fc", weights=str(tmp_path / "r18.safetensors"))


@pytest.mark.parametrize("factory,head_opt", [
    (f"{HERE}:small_cnn", "head"),  # Sequential(Flatten, Dropout, Linear)
    (f"{HERE}:small_cnn", "head.2"),  # the Linear inside it
    (f"{HERE}:ConvHeadCNN", "classifier"),  # 1×1 Conv2d on the pooled map
])
def test_hand_written_cnns(factory, head_opt, images):
    b = _loaded(model=factory, head=head_opt, weights="random", class_names=NAMES)
    assert b.head_path == head_opt
    head = b.head()
    assert head.weight.shape == (3, 16) and head.class_names == NAMES and head.class_keys is None
    assert _gap(b, images) < 1e-5
    check_head_reproduces_logits(b.features, b.logits, head.weight, head.bias, "cnn")(images)
    report = check_backbone(b, images, head_module=b.head_module)
    assert report.null_dim == 16 - 3 and report.feature_error == 0.0
    with torch.no_grad():
        ref = b.model.pool(b.model.body(images)).flatten(1)
    torch.testing.assert_close(b.features(images), ref)


def test_factory_weights_are_the_factorys_own(images):
    b = _loaded(model=f"{HERE}:trained_cnn", head="head", weights="factory")
    assert b.random_weights is False and b.describe()["random_weights"] is False
    assert b.weights_digest == state_dict_digest(trained_cnn())


def test_head_that_runs_on_every_position_is_refused(images):
    b = _loaded(model=f"{HERE}:DenseHeadCNN", head="classifier", weights="random")
    with pytest.raises(HeadError, match="every position"):
        b.features(images)


def test_head_that_runs_twice_is_refused(images):
    b = _loaded(model=f"{HERE}:TwiceCNN", head="head", weights="random")
    with pytest.raises(HeadError, match="2 times"):
        b.features(images)


def test_logits_that_are_not_affine_in_the_features_fail_the_runner_check(images):
    b = _loaded(model=f"{HERE}:ScaledLogitsCNN", head="head", weights="random")
    head = b.head()
    with pytest.raises(HeadError, match="not a plain affine map"):
        check_head_reproduces_logits(b.features, b.logits, head.weight, head.bias, "scaled")(images)


def test_head_paths_that_do_not_name_a_linear_layer():
    with pytest.raises(ConfigError, match="head.2"):
        _loaded(model=f"{HERE}:small_cnn", head="classifer", weights="random")
    with pytest.raises(HeadError, match="head 'body'.*Conv2d with kernel"):
        _loaded(model=f"{HERE}:small_cnn", head="body", weights="random")


def test_factory_errors():
    with pytest.raises(ConfigError, match="package.module:function"):
        _tm(model="torchvision.models.resnet18", head="fc", weights="random").load("cpu")
    with pytest.raises(ConfigError, match="cannot import"):
        _tm(model="no_such_package_xyz:build", head="fc", weights="random").load("cpu")
    with pytest.raises(ConfigError, match="resnet18"):
        _tm(model="torchvision.models:resnet81", head="fc", weights="random").load("cpu")
    with pytest.raises(ConfigError, match="kwargs"):
        _tm(model=f"{HERE}:small_cnn", kwargs={"depth": 3}, head="head", weights="random").load("cpu")


def test_weights_must_be_explicit():
    with pytest.raises(ValidationError, match="weights"):
        TorchModuleBackbone.Options(model=f"{HERE}:small_cnn", head="head")
    with pytest.raises(WeightsError, match="no pretrained registry"):
        _tm(model=f"{HERE}:small_cnn", head="head", weights="pretrained").describe()
    with pytest.raises(WeightsError, match="not found"):
        _tm(model=f"{HERE}:small_cnn", head="head", weights="missing.safetensors").describe()


def test_module_next_to_the_config_is_importable(tmp_path, images):
    (tmp_path / "sing_local_models_xyz.py").write_text(
        "from torch import nn\n\n"
        "def build(classes=2):\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))\n"
    )
    b = _loaded(model="sing_local_models_xyz:build", kwargs={"classes": 5}, head="3", weights="random", base_dir=tmp_path)
    assert b.head().weight.shape == (5, 4) and _gap(b, images) < 1e-5


def test_class_names_must_match_the_head():
    b = _loaded(model=f"{HERE}:small_cnn", head="head", weights="random", class_names=["a", "b"])
    with pytest.raises(ConfigError, match="2 names"):
        b.head()


def test_describe_before_load_and_transform(resnet18):
    from PIL import Image

    b = _tm(model="torchvision.models:resnet18", kwargs={"weights": None}, head="fc", weights="random")
    d = b.describe()
    assert json.loads(json.dumps(d)) == d and b.model is None
    assert d["plugin"] == "torch_module" and d["weights_digest"] is None and d["random_weights"] is True
    assert d["package"].startswith("torchvision") and d["seed"] == 0
    assert d["factory_source"]["file"].endswith("resnet.py") and d["factory_source"]["digest"].startswith("sha256:")
    assert d["preprocessing"] == {"resize": 36, "interpolation": "bilinear", "crop": SIZE,
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert resnet18.describe()["weights_digest"] == resnet18.weights_digest
    x = b.transform()(Image.new("RGB", (50, 40), (10, 200, 30)))
    assert tuple(x.shape) == (3, SIZE, SIZE)
    full = TorchModuleBackbone({"model": "torchvision.models:resnet18", "head": "fc", "weights": "random"})
    assert full.preprocessing()["resize"] == 256 and full.preprocessing()["crop"] == 224


# --------------------------------------------------------------------------- transformers


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


def test_registered_names():
    from sing_audit.host import create_registry
    from sing_audit_huggingface.transformers_backbone import TransformersBackbone

    registry = create_registry()
    assert registry.get("backbone", "torch_module").factory is TorchModuleBackbone
    assert registry.get("backbone", "transformers").factory is TransformersBackbone


# --------------------------------------------------------------------------- end to end


def test_torch_module_and_transformers_end_to_end(tmp_path, hf_models):
    """One audit, two backbones (a hand-written CNN and a tiny transformers ViT), precomputed target."""
    from sing_audit.cli import main
    from sing_audit.synthetic import SYNSETS, write_image_folder

    from .conftest import PIPELINE_POLICY, write_config

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
            {"name": "cnn", "plugin": "torch_module", "model": f"{HERE}:small_cnn", "kwargs": {"width": 8},
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
