"""timm backbones at random init and with weights saved to local files (no hub access)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import save_file

from sing_audit.components import ImageBackbone, LinearHead
from sing_audit.errors import ConfigError, HeadError, WeightsError
from sing_audit.plugins import timm_backbone as tb
from sing_audit.plugins.timm_backbone import TimmBackbone, imagenet_class_info
from sing_audit.weights import file_digest, state_dict_digest

SIZE = 32


def _build(**options) -> TimmBackbone:
    b = TimmBackbone(TimmBackbone.Options(**options))
    b.load("cpu")
    return b


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, SIZE, SIZE, generator=g)


@pytest.fixture(scope="module")
def resnet():
    return _build(model="resnet18", weights="random", img_size=SIZE)


@pytest.fixture(scope="module")
def vit():
    return _build(model="vit_tiny_patch16_224", weights="random", img_size=SIZE)


@pytest.fixture(scope="module")
def weight_files(resnet, tmp_path_factory):
    """resnet18's random weights saved as .safetensors and as a DDP-style nested .pth."""
    d = tmp_path_factory.mktemp("weights")
    sd = {k: v.detach().clone().contiguous() for k, v in resnet.model.state_dict().items()}
    save_file(sd, str(d / "resnet18.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 7}, d / "resnet18.pth")
    return d


@pytest.fixture
def offline(monkeypatch):
    """No hub access, and fail fast rather than retry (the constant is read at import time)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _relative_gap(backbone: TimmBackbone, x: torch.Tensor) -> float:
    head = backbone.head()
    f = backbone.features(x).double().numpy()
    logits = backbone.logits(x).double().numpy()
    assert f.shape == (x.shape[0], head.num_features)
    assert logits.shape == (x.shape[0], head.num_classes)
    return float(np.abs(f @ head.weight.T + head.bias - logits).max() / np.abs(logits).max())


# --------------------------------------------------------------------------- random init


@pytest.mark.parametrize("name", ["resnet", "vit"])
def test_features_times_head_equals_logits(name, request, images):
    backbone = request.getfixturevalue(name)
    assert isinstance(backbone, ImageBackbone)
    assert backbone.random_weights is True
    assert _relative_gap(backbone, images) < 1e-5


def test_head_fields(resnet):
    head = resnet.head()
    assert isinstance(head, LinearHead)
    assert head.weight.shape == (1000, 512) and head.weight.dtype == np.float64
    assert head.bias.shape == (1000,)
    assert head.weight_eps == float(torch.finfo(torch.float32).eps)
    assert head.class_keys[0] == "n01440764" and head.class_names[0] == "tench"
    assert head.class_names[1] == "goldfish"
    assert all("," not in n for n in head.class_names)
    np.testing.assert_array_equal(head.weight, resnet.model.fc.weight.detach().double().numpy())


def test_vit_head_width(vit):
    head = vit.head()
    assert head.weight.shape == (1000, 192)


def test_describe_is_json_and_complete(resnet):
    d = resnet.describe()
    assert json.loads(json.dumps(d)) == d
    assert d["plugin"] == "timm" and d["model"] == "resnet18"
    assert d["weights"]["kind"] == "random" and d["random_weights"] is True
    assert d["weights_digest"] == state_dict_digest(resnet.model) == resnet.weights_digest
    assert d["img_size"] == SIZE and d["seed"] == 0
    assert d["resolved_tag"] is None
    assert d["preprocessing"]["input_size"] == [3, SIZE, SIZE]
    assert {"mean", "std", "interpolation", "crop_pct"} <= set(d["preprocessing"])
    assert "base_dir" not in json.dumps(d)


def test_describe_before_load_is_cheap_and_consistent(resnet):
    b = TimmBackbone({"model": "resnet18", "weights": "random", "img_size": SIZE})
    d = b.describe()
    assert d["weights_digest"] is None and b.model is None
    assert d["preprocessing"] == resnet.describe()["preprocessing"]


def test_transform_gives_small_tensor(resnet, vit):
    img = Image.new("RGB", (50, 40), (200, 10, 30))
    for b in (resnet, vit):
        x = b.transform()(img)
        assert tuple(x.shape) == (3, SIZE, SIZE) and x.dtype == torch.float32


def test_seed_is_deterministic_and_local(vit):
    state = torch.random.get_rng_state()
    again = _build(model="vit_tiny_patch16_224", weights="random", img_size=SIZE)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert again.weights_digest == vit.weights_digest
    other = _build(model="vit_tiny_patch16_224", weights="random", img_size=SIZE, seed=1)
    assert other.weights_digest != vit.weights_digest


def test_bit_conv_head_is_flattened(images):
    bit = _build(model="resnetv2_50x1_bit", weights="random", img_size=SIZE)
    clf = bit.model.get_classifier()
    assert isinstance(clf, torch.nn.Conv2d) and clf.kernel_size == (1, 1)
    head = bit.head()
    assert head.weight.shape == (1000, 2048)
    np.testing.assert_array_equal(head.weight, clf.weight.detach().double().numpy()[:, :, 0, 0])
    assert _relative_gap(bit, images) < 1e-5


def test_distilled_head_is_refused():
    deit = _build(model="deit_tiny_distilled_patch16_224", weights="random", img_size=SIZE)
    with pytest.raises(HeadError, match="tuple of Linear, Linear"):
        deit.head()


def test_other_head_types_are_refused(resnet, monkeypatch):
    seq = torch.nn.Sequential(torch.nn.BatchNorm1d(512), torch.nn.Linear(512, 1000))
    monkeypatch.setattr(resnet.model, "get_classifier", lambda: seq)
    with pytest.raises(HeadError, match="Sequential"):
        resnet.head()


def test_use_before_load():
    b = TimmBackbone({"model": "resnet18", "weights": "random"})
    with pytest.raises(RuntimeError, match="load"):
        b.head()


# --------------------------------------------------------------------------- local files


@pytest.mark.parametrize("fname", ["resnet18.safetensors", "resnet18.pth"])
def test_file_roundtrip(fname, resnet, weight_files, images):
    loaded = _build(model="resnet18", weights=fname, img_size=SIZE, base_dir=weight_files)
    assert loaded.random_weights is False
    assert loaded.weights_digest == file_digest(weight_files / fname)
    assert state_dict_digest(loaded.model) == resnet.weights_digest
    assert torch.equal(loaded.features(images), resnet.features(images))
    d = loaded.describe()
    assert d["weights"]["kind"] == "file" and d["weights"]["path"] == str((weight_files / fname).resolve())
    assert d["weights_digest"] == file_digest(weight_files / fname)
    assert d["random_weights"] is False


def test_file_digest_in_describe_before_load(weight_files):
    b = TimmBackbone({"model": "resnet18", "weights": "resnet18.safetensors", "base_dir": weight_files})
    assert b.describe()["weights_digest"] == file_digest(weight_files / "resnet18.safetensors")


def test_num_classes_inferred_from_file(tmp_path, images):
    import timm

    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, img_size=SIZE)
    save_file(src.state_dict(), str(tmp_path / "ft.safetensors"))
    b = _build(model="vit_tiny_patch16_224", weights="ft.safetensors", img_size=SIZE, base_dir=tmp_path)
    head = b.head()
    assert head.num_classes == 7 and head.class_names is None and head.class_keys is None
    assert _relative_gap(b, images) < 1e-5


def test_headless_file_gives_head_error(tmp_path):
    import timm

    src = timm.create_model("resnet18", pretrained=False, num_classes=0)
    save_file(src.state_dict(), str(tmp_path / "headless.safetensors"))
    b = _build(model="resnet18", weights="headless.safetensors", img_size=SIZE, base_dir=tmp_path)
    with pytest.raises(HeadError, match=r"no classification head \(num_classes=0\)"):
        b.head()


def test_wrong_architecture_lists_keys(weight_files):
    b = TimmBackbone({"model": "resnet34", "weights": "resnet18.safetensors", "base_dir": weight_files})
    with pytest.raises(WeightsError) as err:
        b.load("cpu")
    msg = str(err.value)
    assert "resnet34" in msg and "missing key(s)" in msg and "layer" in msg and "same model" in msg


def test_unsafe_pickle_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"fc.weight": torch.zeros(2, 2), "x": Payload()}, tmp_path / "evil.pt")
    b = TimmBackbone({"model": "resnet18", "weights": "evil.pt", "base_dir": tmp_path})
    with pytest.raises(WeightsError, match="arbitrary code"):
        b.load("cpu")


def test_missing_file_names_path(tmp_path):
    b = TimmBackbone({"model": "resnet18", "weights": "nope.safetensors", "base_dir": tmp_path})
    with pytest.raises(WeightsError, match=str(tmp_path / "nope.safetensors")):
        b.load("cpu")


# --------------------------------------------------------------------------- hub (offline)


@pytest.mark.parametrize(
    "options",
    [
        {"model": "resnet18"},
        {"model": "resnet18", "weights": "a1_in1k"},
        {"model": "resnet18.a1_in1k", "weights": "pretrained"},
    ],
)
def test_pretrained_offline_fails_fast(options, offline):
    b = TimmBackbone({**options, "img_size": SIZE})
    start = time.monotonic()
    with pytest.raises(WeightsError) as err:
        b.load("cpu")
    assert time.monotonic() - start < 20
    msg = str(err.value)
    assert "could not be fetched" in msg and "weights: <local file>" in msg and "weights: random" in msg
    assert b.model is None


def test_architecture_without_pretrained_weights():
    with pytest.raises(WeightsError, match="no pretrained weights"):
        TimmBackbone({"model": "botnet50ts_256"}).load("cpu")


def test_unknown_tag_lists_known_ones():
    with pytest.raises(WeightsError, match="a1_in1k"):
        TimmBackbone({"model": "resnet18", "weights": "a1_in1kk"}).load("cpu")


def test_conflicting_tags():
    with pytest.raises(WeightsError, match="one place"):
        TimmBackbone({"model": "resnet18.a1_in1k", "weights": "tv_in1k"}).load("cpu")


def test_unknown_model_suggests_names():
    with pytest.raises(ConfigError, match="resnet18"):
        TimmBackbone({"model": "resnet181", "weights": "random"}).load("cpu")


# --------------------------------------------------------------------------- options, img_size, registration


def test_options_validation():
    with pytest.raises(ValidationError):
        TimmBackbone.Options(model="resnet18", bogus=1)
    with pytest.raises(ValidationError):
        TimmBackbone.Options(model="  ")
    with pytest.raises(ValidationError):
        TimmBackbone.Options(model="resnet18", img_size=0)
    assert TimmBackbone.Options(model="resnet18").weights == "pretrained"


def test_fixed_size_arch_without_img_size_is_a_clear_error(monkeypatch):
    import timm

    real_create = timm.create_model

    def create(name, **kwargs):
        if "img_size" in kwargs:
            raise TypeError("Net.__init__() got an unexpected keyword argument 'img_size'")
        return real_create(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)
    b = TimmBackbone({"model": "vit_tiny_patch16_224", "weights": "random", "img_size": SIZE})
    with pytest.raises(ConfigError, match="fixed input size"):
        b.load("cpu")


def test_imagenet_class_info():
    keys, names = imagenet_class_info(1000)
    assert len(keys) == len(names) == 1000 and names[0] == "tench"
    assert imagenet_class_info(7) is None
    big = imagenet_class_info(21843)
    assert big is not None and len(big[0]) == 21843 and all(k.startswith("n") for k in big[0][:10])


def test_registration():
    registered = {}
    tb.register_backbones(register=lambda name, factory: registered.setdefault(name, factory))
    assert registered == {"timm": TimmBackbone}
    assert hasattr(TimmBackbone, "Options")
