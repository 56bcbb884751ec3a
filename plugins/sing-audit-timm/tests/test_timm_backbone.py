"""timm backbones at random init and with weights saved to local files (no hub access)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import save_file

from sing_audit.components import ImageBackbone, LinearHead
from sing_audit.errors import ConfigError, HeadError, WeightsError
from sing_audit_timm import backbone as tb
from sing_audit_timm.backbone import TimmBackbone
from sing_audit_timm.classes import imagenet_class_info
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


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so that nothing on this machine is found by accident."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


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


def test_distilled_deit_head_is_folded_on_both_tokens(images):
    """DeiT distilled: logits = (head(cls) + head_dist(dist)) / 2, so f = [cls, dist] and W = [W1/2, W2/2]."""
    deit = _build(model="deit_tiny_distilled_patch16_224", weights="random", img_size=SIZE)
    head = deit.head()
    w1 = deit.model.head.weight.detach().double().numpy()
    w2 = deit.model.head_dist.weight.detach().double().numpy()
    assert head.weight.shape == (1000, 2 * 192)
    np.testing.assert_allclose(head.weight, np.hstack([w1 / 2, w2 / 2]), rtol=0, atol=0)
    b = (deit.model.head.bias + deit.model.head_dist.bias).detach().double().numpy() / 2
    np.testing.assert_allclose(head.bias, b, rtol=1e-15, atol=0)
    with torch.no_grad():
        tokens = deit.model.forward_features(images)
    np.testing.assert_array_equal(deit.features(images).numpy(), torch.cat([tokens[:, 0], tokens[:, 1]], 1).numpy())
    # timm's pre_logits is the *average* of the two tokens: not what the pair of heads reads
    with torch.no_grad():
        assert deit.model.forward_head(tokens, pre_logits=True).shape[1] == 192
    assert _relative_gap(deit, images) < 1e-5
    assert deit.folded_head().shared_input is False


def test_levit_batchnorm_heads_are_folded_on_one_input():
    """LeViT: two BatchNorm1d + Linear heads read the same pooled tokens: W = mean of the folded maps."""
    levit = _build(model="levit_128s", weights="random", img_size=64)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    # non-trivial BatchNorm statistics, so that the fold is exercised
    g = torch.Generator().manual_seed(2)
    for hm in levit.model.get_classifier():
        hm.bn.running_mean.copy_(torch.randn(hm.bn.num_features, generator=g))
        hm.bn.running_var.copy_(torch.rand(hm.bn.num_features, generator=g) + 0.5)
        hm.bn.weight.data.copy_(torch.randn(hm.bn.num_features, generator=g))
        hm.bn.bias.data.copy_(torch.randn(hm.bn.num_features, generator=g))
    levit._folded = None
    head = levit.head()
    assert head.weight.shape == (1000, 384)
    assert levit.folded_head().shared_input is True
    assert "BatchNorm1d+Linear" in levit.folded_head().description
    assert _relative_gap(levit, x) < 1e-5


class _Net(torch.nn.Module):
    """A tiny classifier with a configurable head, for head-folding tests (timm's interface)."""

    def __init__(self, head: torch.nn.Module, width: int = 6):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, width), torch.nn.Tanh())
        self.fc = head
        self.num_classes = 5

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.fc(self.body(x))


class _CosineLinear(torch.nn.Linear):
    def forward(self, x):
        return torch.nn.functional.linear(
            torch.nn.functional.normalize(x, dim=-1), torch.nn.functional.normalize(self.weight, dim=-1)
        )


def _with_head(head: torch.nn.Module) -> TimmBackbone:
    torch.manual_seed(0)
    b = TimmBackbone({"model": "resnet18", "weights": "random", "img_size": SIZE})
    b.model = _Net(head).eval()
    return b


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda: _CosineLinear(6, 5), "_CosineLinear, a subclass of nn.Linear with its own forward"),
        (lambda: torch.nn.Sequential(torch.nn.LayerNorm(6), torch.nn.Linear(6, 5)), "LayerNorm, which normalises"),
        (lambda: torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.ReLU(), torch.nn.Linear(6, 5)), "ReLU"),
        (lambda: torch.nn.Conv2d(6, 5, 3), "Conv2d with kernel (3, 3)"),
    ],
    ids=["cosine", "layernorm", "mlp", "conv3x3"],
)
def test_non_affine_heads_are_refused_by_name(make, needle):
    b = _with_head(make())
    with pytest.raises(HeadError) as err:
        b.head()
    msg = str(err.value)
    assert needle in msg and "resnet18" in msg and "precomputed" in msg


def test_batchnorm_linear_sequential_is_folded():
    bn = torch.nn.BatchNorm1d(6)
    with torch.no_grad():
        bn.running_mean.copy_(torch.linspace(-1, 1, 6))
        bn.running_var.copy_(torch.linspace(0.5, 2, 6))
        bn.weight.copy_(torch.linspace(2, -1, 6))
        bn.bias.copy_(torch.linspace(0.1, 0.6, 6))
    b = _with_head(torch.nn.Sequential(bn, torch.nn.Dropout(0.3), torch.nn.Linear(6, 5)))
    x = torch.randn(4, 3, 4, 4)
    assert _relative_gap(b, x) < 1e-6
    assert b.head().weight.shape == (5, 6)


def test_head_in_training_mode_is_refused():
    b = _with_head(torch.nn.Sequential(torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 5)))
    b.model.train()
    with pytest.raises(HeadError, match="training mode"):
        b.head()


def test_head_not_in_forward_is_refused(monkeypatch, images):
    b = _build(model="resnet18", weights="random", img_size=SIZE)
    stray = torch.nn.Linear(512, 1000)
    monkeypatch.setattr(b.model, "get_classifier", lambda: stray)
    b.head()  # a Linear folds ...
    with pytest.raises(HeadError, match="never called"):
        b.features(images)  # ... but the model never applies it


def test_vgg_features_are_the_pre_logits_mlp_output(images):
    vgg = _build(model="vgg11", weights="random", img_size=SIZE)
    assert vgg.model.num_features == 512 and vgg.model.head_hidden_size == 4096
    assert vgg.head().weight.shape == (1000, 4096)
    assert vgg.features(images).shape == (3, 4096)
    assert _relative_gap(vgg, images) < 1e-5


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


@pytest.fixture(scope="module")
def vit_files(vit, tmp_path_factory):
    """vit_tiny's random weights (32 px) in every supported layout."""
    from timm.models import save_for_hf

    d = tmp_path_factory.mktemp("vitw")
    sd = {k: v.detach().clone().contiguous() for k, v in vit.model.state_dict().items()}
    save_file(sd, str(d / "w.safetensors"))
    torch.save(sd, d / "w.pth")
    torch.save(sd, d / "w.pt")
    torch.save({"model": sd, "epoch": 3}, d / "nested.pt")
    save_for_hf(vit.model, str(d / "hub_safetensors"), safe_serialization=True)
    save_for_hf(vit.model, str(d / "hub_bin"), safe_serialization=False)
    return d


@pytest.mark.parametrize(
    "options",
    [
        {"weights": "w.safetensors", "img_size": SIZE},
        {"weights": "w.pth", "img_size": SIZE},
        {"weights": "w.pt", "img_size": SIZE},
        {"weights": "nested.pt", "img_size": SIZE},
        {"weights": "hub_safetensors"},  # the folder's config.json carries img_size and preprocessing
        {"weights": "./hub_bin", "img_size": SIZE},
        {"model": "local-dir:hub_safetensors"},
        {"model": "local-dir:hub_bin", "weights": "pretrained"},
    ],
    ids=["safetensors", "pth", "pt", "nested-pt", "hub-folder", "hub-folder-bin", "local-dir", "local-dir-bin"],
)
def test_every_format_roundtrips_bit_for_bit(options, vit, vit_files, images, offline):
    """Random weights saved in each format load back through the plugin (relative to the config's folder)."""
    opts = {"model": "vit_tiny_patch16_224", "base_dir": vit_files, **options}
    b = TimmBackbone(opts)
    before = b.describe()
    b.load("cpu")
    assert b.random_weights is False
    assert torch.equal(b.logits(images), vit.logits(images))
    assert torch.equal(b.features(images), vit.features(images))
    np.testing.assert_array_equal(b.head().weight, vit.head().weight)
    assert state_dict_digest(b.model) == vit.weights_digest
    after = b.describe()
    assert after["weights"]["kind"] == "file" and after["weights_digest"] == file_digest(Path(after["weights"]["path"]))
    assert before["preprocessing"] == after["preprocessing"] == vit.describe()["preprocessing"]
    if "folder" in after["weights"]:
        assert after["pretrained_cfg"] == f"local-dir:{after['weights']['folder']}" and "config_digest" in after


def test_hub_folder_of_another_architecture_is_refused(vit_files):
    with pytest.raises(WeightsError, match="holds a 'vit_tiny_patch16_224'.*model: vit_tiny_patch16_224"):
        TimmBackbone({"model": "resnet18", "weights": "hub_bin", "base_dir": vit_files})


def test_folder_without_config_or_weights(tmp_path, weight_files):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="holds no weights file"):
        TimmBackbone({"model": "resnet18", "weights": "empty", "base_dir": tmp_path})
    (tmp_path / "noconfig").mkdir()
    (tmp_path / "noconfig" / "model.safetensors").write_bytes((weight_files / "resnet18.safetensors").read_bytes())
    with pytest.raises(WeightsError, match="no config.json"):
        TimmBackbone({"model": "local-dir:noconfig", "base_dir": tmp_path})
    b = _build(model="resnet18", weights="noconfig/model.safetensors", img_size=SIZE, base_dir=tmp_path)
    assert b.random_weights is False


@pytest.mark.slow
def test_hub_folder_runs_an_audit_end_to_end(vit_files, tmp_path, capsys):
    """The user's whole path: audit.yaml -> host -> plugin validation -> load from a hub folder -> results."""
    import shutil

    from sing_audit.cli import main

    from sing_audit.testing import image_folder_audit

    shutil.copytree(vit_files / "hub_safetensors", tmp_path / "models" / "vit")
    cfg = image_folder_audit(tmp_path, [{"name": "vit", "plugin": "timm", "model": "vit_tiny_patch16_224", "weights": "models/vit"}])
    assert main(["run", str(cfg)]) == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    model = res["models"][0]
    assert model["random_weights"] is False and model["null_dim"] == 0


@pytest.mark.parametrize("command", ["validate", "run"])
def test_offline_uncached_config_exits_2_before_building(command, tmp_path, offline, empty_hub_cache, capsys, monkeypatch):
    from sing_audit.cli import main

    from sing_audit.testing import write_config

    def no_load(self, device):
        raise AssertionError("load() reached although validation should have failed")

    monkeypatch.setattr(TimmBackbone, "load", no_load)
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "a" / "x.png")
    np.savez(tmp_path / "t.npz", image_embeddings=np.zeros((1, 4), np.float32), text_embeddings=np.zeros((1000, 4), np.float32))
    cfg = write_config(
        tmp_path,
        {
            "output": "out",
            "dataset": {"plugin": "image_folder", "root": "val"},
            "target": {"plugin": "precomputed", "path": "t.npz"},
            "backbones": [{"name": "r50", "plugin": "timm", "model": "resnet50.a1_in1k"}],
        },
    )
    assert main([command, str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "resnet50.a1_in1k" in err and "not on this machine" in err and "weights: <local file>" in err
    assert f"{cfg}: backbones[0].weights: the pretrained weights of timm model" in err
    assert "\n" not in err and err.count("not on this machine") == 1


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


def test_unsafe_pickle_in_hub_folder_refused(tmp_path, vit_files):
    """A hub folder's pytorch_model.bin is read like any file: a pickle that needs code is refused."""
    import shutil

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    shutil.copytree(vit_files / "hub_bin", tmp_path / "evil")
    torch.save({"head.weight": torch.zeros(2, 2), "x": Payload()}, tmp_path / "evil" / "pytorch_model.bin")
    b = TimmBackbone({"model": "local-dir:evil", "base_dir": tmp_path})
    with pytest.raises(WeightsError, match="arbitrary code"):
        b.load("cpu")
    assert b.model is None


def test_missing_file_names_path(tmp_path):
    with pytest.raises(WeightsError, match=str(tmp_path / "nope.safetensors")):
        TimmBackbone({"model": "resnet18", "weights": "nope.safetensors", "base_dir": tmp_path})


# --------------------------------------------------------------------------- hub (offline)


@pytest.mark.parametrize(
    "options",
    [
        {"model": "resnet18"},
        {"model": "resnet18", "weights": "a1_in1k"},
        {"model": "resnet18.a1_in1k", "weights": "pretrained"},
        {"model": "vit_base_patch16_224.augreg2_in21k_ft_in1k"},
    ],
)
def test_uncached_pretrained_offline_fails_at_validation(options, offline, empty_hub_cache, monkeypatch):
    """Offline and not in the cache: the constructor (the host's validation step) refuses, builds nothing."""
    import timm

    def no_build(*args, **kwargs):
        raise AssertionError("a model was built although the options are invalid")

    monkeypatch.setattr(timm, "create_model", no_build)
    start = time.monotonic()
    with pytest.raises(WeightsError) as err:
        TimmBackbone({**options, "img_size": SIZE})
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert "not on this machine" in msg and "HF_HUB_OFFLINE" in msg and "model.safetensors" in msg
    assert "weights: <local file>" in msg and "hub's layout" in msg and "weights: random" in msg
    assert str(empty_hub_cache) in msg


def test_uncached_hub_repository_offline_fails_at_validation(offline, empty_hub_cache):
    with pytest.raises(WeightsError, match="timm/resnet18.a1_in1k.*not in the local hub cache.*hf download timm/resnet18.a1_in1k"):
        TimmBackbone({"model": "hf-hub:timm/resnet18.a1_in1k"})


def test_pretrained_without_network_fails_at_load_not_silently(monkeypatch, empty_hub_cache):
    """Offline not declared, but no network: load fails with the same advice; never random weights."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    import timm.models._builder as builder

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", unreachable)
    monkeypatch.setattr(builder, "load_state_dict_from_url", unreachable)
    b = TimmBackbone({"model": "resnet18.a1_in1k", "img_size": SIZE})  # not known to be offline: validates
    with pytest.raises(WeightsError) as err:
        b.load("cpu")
    assert "could not be fetched" in str(err.value) and "weights: random" in str(err.value)
    assert b.model is None


def _fake_hub_cache(cache: Path, repo_id: str, files: dict[str, dict]) -> Path:
    """Lay files out like huggingface_hub's cache (refs/main -> snapshots/<commit>/...)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, sd in files.items():
        if name.endswith(".safetensors"):
            save_file(sd, str(snap / name))
        else:
            torch.save(sd, snap / name)
    return snap


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_cached_pretrained_tag_loads_offline(filename, offline, empty_hub_cache, resnet, images):
    """A tag whose weights are in the local hub cache validates and loads offline, through timm's own path."""
    sd = {k: v.detach().clone().contiguous() for k, v in resnet.model.state_dict().items()}
    _fake_hub_cache(empty_hub_cache, "timm/resnet18.a1_in1k", {filename: sd})
    b = _build(model="resnet18", weights="a1_in1k", img_size=SIZE)
    assert b.random_weights is False and b.describe()["resolved_tag"] == "a1_in1k"
    assert torch.equal(b.logits(images), resnet.logits(images))
    assert torch.equal(b.features(images), resnet.features(images))


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


def test_core_imagenet_table_is_timms():
    """The core's ImageNet-1k table (no timm needed) holds what timm gives, class for class."""
    from timm.data import ImageNetInfo

    from sing_audit import imagenet

    info = ImageNetInfo("imagenet-1k")
    keys, descriptions = imagenet.imagenet_descriptions()
    assert keys == tuple(info.index_to_label_name(i) for i in range(1000))
    assert descriptions == tuple(info.index_to_description(i) for i in range(1000))
    assert imagenet.imagenet_class_info(1000) == imagenet_class_info(1000)


def test_registration():
    registered = {}
    tb.register_backbones(register=lambda name, factory: registered.setdefault(name, factory))
    assert registered == {"timm": TimmBackbone}


def test_the_family_registers_its_components_and_head_folders():
    """Through its entry points: the backbones and timm's head folders, each from this distribution."""
    from timm.layers.linear import Linear as TimmLinear
    from timm.models.levit import NormLinear

    from sing_audit.heads import type_path
    from sing_audit.host import create_registry

    registry = create_registry()
    for kind, name in [("backbone", "timm"), ("backbone", "dino_vit"), ("head_folder", type_path(TimmLinear)),
                       ("head_folder", type_path(NormLinear))]:
        assert registry.get(kind, name).package.startswith("sing-audit-timm "), (kind, name)
    assert hasattr(TimmBackbone, "Options")


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_refuses_a_misspelt_model_before_building(command, tmp_path, capsys, monkeypatch):
    from sing_audit.cli import main
    from sing_audit.testing import image_folder_audit

    def no_load(self, device="cpu"):
        raise AssertionError("load() reached although the pre-flight should have failed")

    monkeypatch.setattr(TimmBackbone, "load", no_load)
    cfg = image_folder_audit(tmp_path, [{"name": "r", "plugin": "timm", "model": "resnet5", "weights": "random"}])
    assert main([command, str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"{cfg}: backbones[0].model: timm has no model named 'resnet5'; did you mean resnet50" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_refuses_a_class_folder_of_no_head_class_before_building(command, tmp_path, capsys, monkeypatch):
    from sing_audit.cli import main
    from sing_audit.testing import image_folder_audit

    def no_load(self, device="cpu"):
        raise AssertionError("load() reached although the pre-flight should have failed")

    monkeypatch.setattr(TimmBackbone, "load", no_load)
    for name in ("n01440764", "tabby cat", "my_widget"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / name / "a.png")
    backbone = {"name": "r", "plugin": "timm", "model": "resnet18", "weights": "random"}
    cfg = image_folder_audit(tmp_path, [backbone], dataset={"root": "imgs"})
    assert main([command, str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"{cfg}: dataset: 1 dataset label(s) do not match the head's class names: 'my_widget'" in err
    assert "backbones[0] 'r': 1000 classes" in err
    assert not (tmp_path / "out").exists()
    (tmp_path / "imgs" / "my_widget" / "a.png").unlink()
    (tmp_path / "imgs" / "my_widget").rmdir()
    assert main(["validate", str(cfg)]) == 0  # a synset and a synonym ("tabby cat" is class 281)


def test_declared_classes_come_from_the_pretrained_config():
    from sing_audit.imagenet import imagenet_class_info

    count, names, keys = TimmBackbone({"model": "resnet18", "weights": "random"}).declared_classes()
    assert count == 1000 and keys == list(imagenet_class_info(1000)[0]) and names[281] == "tabby"
    assert TimmBackbone({"model": "vit_base_patch16_224.augreg_in21k", "weights": "random"}).declared_classes()[0] == 21843


# --------------------------------------------------------------------------- feature width before load


@pytest.mark.parametrize("model", ["resnet18", "vit_tiny_patch16_224"])
def test_declared_feature_dim_is_the_features_width(model, images):
    b = TimmBackbone({"model": model, "weights": "random", "img_size": SIZE})
    declared = b.declared_feature_dim()
    assert b.model is None  # told without loading
    b.load("cpu")
    assert declared == b.features(images).shape[1] == b.head().num_features


@pytest.mark.parametrize("model, width", [("vgg11", 4096), ("resnetv2_50x1_bit", 2048), ("convnext_base", 1024)])
def test_declared_feature_dim_of_heads_of_other_kinds(model, width):
    """VGG's pre-logits MLP (the head reads 4096), BiT's 1×1 conv head, ConvNeXt's norm + Linear head."""
    assert TimmBackbone({"model": model, "weights": "random"}).declared_feature_dim() == width


def test_declared_feature_dim_is_none_when_a_forward_pass_would_tell():
    """A distilled pair of heads: whether they read one tensor takes a forward pass, so no guess."""
    assert TimmBackbone({"model": "deit_tiny_distilled_patch16_224", "weights": "random"}).declared_feature_dim() is None
