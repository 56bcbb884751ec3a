"""Generic PyTorch classifiers (``torch_module``): features are the head's real input,
captured by a forward pre-hook. (The Hugging Face ``transformers`` backbone, built on the
same hooked-head base, is tested in plugins/sing-audit-huggingface.)

Everything is built at random init without a network: torchvision's resnet18
(``weights=None``) and small CNNs defined here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file
from torch import nn

from sing_audit.errors import ConfigError, HeadError, WeightsError
from sing_audit.pipeline.extraction import check_head_reproduces_logits
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


def test_registered_names():
    from sing_audit.host import create_registry

    assert create_registry().get("backbone", "torch_module").factory is TorchModuleBackbone
