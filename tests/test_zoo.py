"""The paper's backbones through the timm plugin: random-init real architectures, no network.

Each architecture is built once, at a small input size where the architecture allows it
(ViTs at 2×2 patches, Swin at 32 px with its windows clamped to the stage size, CNNs at
32 px), and checked with :func:`sing_audit.testing.check_backbone`: the features are the
head's real input (forward pre-hook on ``get_classifier()``), ``logits == f Wᵀ + b`` to
1e-5, the head's shape, and the exact null dimension. Preprocessing comes from the
model's pretrained config, read locally (the named tag, e.g. ``vgg16.tv_in1k``), at the
native size when no ``img_size`` is given.
"""

from __future__ import annotations

import gc
import socket
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from sing_audit_timm.backbone import TimmBackbone
from sing_audit.testing import check_backbone, numerical_rank


@dataclass(frozen=True)
class Arch:
    id: str
    model: str  # timm name with the paper's tag: its pretrained config sets the preprocessing
    size: int  # test input size
    features: int  # width of the head's input
    null_dim: int  # exact null dimension at random init (features − rank)
    head: str  # what the folded head is
    timm_pre_logits_is_head_input: bool = True
    slow: bool = False


ZOO = [
    Arch("vgg16", "vgg16.tv_in1k", 32, 4096, 3096, "Linear", slow=True),
    Arch("vgg19", "vgg19.tv_in1k", 32, 4096, 3096, "Linear", slow=True),
    Arch("densenet121", "densenet121.tv_in1k", 32, 1024, 24, "Linear", slow=True),
    Arch("resnet50", "resnet50.tv_in1k", 32, 2048, 1048, "Linear"),
    Arch("efficientnet_b0_ns", "tf_efficientnet_b0.ns_jft_in1k", 32, 1280, 280, "Linear", slow=True),
    Arch("efficientnet_b4_ns", "tf_efficientnet_b4.ns_jft_in1k", 32, 1792, 792, "Linear", slow=True),
    Arch("bit_resnetv2_50x1", "resnetv2_50x1_bit.goog_in21k_ft_in1k", 32, 2048, 1048, "Conv2d 1×1", slow=True),
    Arch("resnext101_32x8d_wsl", "resnext101_32x8d.fb_wsl_ig1b_ft_in1k", 32, 2048, 1048, "Linear", slow=True),
    Arch("convnext_base", "convnext_base.fb_in22k_ft_in1k", 32, 1024, 24, "Linear", slow=True),
    Arch("swin_large", "swin_large_patch4_window7_224.ms_in22k_ft_in1k", 32, 1536, 536, "Linear", slow=True),
    Arch("deit3_large", "deit3_large_patch16_224.fb_in22k_ft_in1k", 32, 1024, 24, "Linear", slow=True),
    Arch("eva02_large", "eva02_large_patch14_448.mim_m38m_ft_in22k_in1k", 28, 1024, 24, "Linear", slow=True),
    Arch("vit_base", "vit_base_patch16_224.augreg2_in21k_ft_in1k", 32, 768, 0, "Linear", slow=True),
    Arch("vit_large", "vit_large_patch16_224.augreg_in21k_ft_in1k", 32, 1024, 24, "Linear", slow=True),
    Arch("vit_small", "vit_small_patch16_224.augreg_in21k_ft_in1k", 32, 384, 0, "Linear"),
    # beyond the paper: heads that are folded rather than read as one Linear
    Arch(
        "deit_base_distilled",
        "deit_base_distilled_patch16_224.fb_in1k",
        32,
        2 * 768,
        2 * 768 - 1000,
        "mean of 2 heads (Linear, Linear) on their own features, concatenated",
        timm_pre_logits_is_head_input=False,  # timm's pre_logits averages the two tokens
        slow=True,
    ),
    Arch(
        "levit_128s_distilled",
        "levit_128s.fb_dist_in1k",
        32,
        384,
        0,
        "mean of 2 heads (NormLinear(BatchNorm1d+Linear), NormLinear(BatchNorm1d+Linear)) on the same features",
    ),
]


def _params(archs):
    return [pytest.param(a, id=a.id, marks=[pytest.mark.slow] if a.slow else []) for a in archs]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test; the hub is declared offline too."""
    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("arch", _params(ZOO))
def test_backbone_contract(arch: Arch, no_network):
    import timm

    backbone = TimmBackbone({"model": arch.model, "weights": "random", "img_size": arch.size})
    backbone.load("cpu")
    try:
        images = torch.randn(2, 3, arch.size, arch.size, generator=torch.Generator().manual_seed(0))
        clf = backbone.model.get_classifier()
        report = check_backbone(backbone, images, head_module=clf, rtol=1e-5, expected_null_dim=arch.null_dim, name=arch.id)
        head = backbone.head()
        assert head.weight.shape == (1000, arch.features) and report.num_features == arch.features
        assert report.feature_error == 0.0  # the features are the head's input, bit for bit
        assert report.logit_error < 1e-5
        assert head.class_keys[0] == "n01440764" and head.class_names[0] == "tench"
        assert backbone.folded_head().description == arch.head

        assert report.rank == arch.features - arch.null_dim

        # timm's own pre-logits output, where it is the head's input, agrees with the hooked features
        with torch.no_grad():
            pre = backbone.model.forward_head(backbone.model.forward_features(images), pre_logits=True)
        pre = pre.reshape(pre.shape[0], -1).double().numpy()
        same = pre.shape == (2, arch.features) and np.array_equal(pre, report.features)
        assert same is arch.timm_pre_logits_is_head_input

        # preprocessing: the named tag's pretrained config, read without a network
        cfg = timm.models.get_pretrained_cfg(arch.model)
        assert backbone.pretrained_cfg_name() == arch.model
        assert backbone.describe()["pretrained_cfg"] == arch.model
        dc = backbone.data_config()
        assert tuple(dc["input_size"]) == (3, arch.size, arch.size)
        assert tuple(dc["mean"]) == tuple(cfg.mean) and tuple(dc["std"]) == tuple(cfg.std)
        assert dc["interpolation"] == cfg.interpolation and dc["crop_pct"] == cfg.crop_pct
    finally:
        del backbone
        gc.collect()


@pytest.mark.parametrize("arch", [pytest.param(a, id=a.id) for a in ZOO])
def test_native_preprocessing_from_pretrained_config_offline(arch: Arch, no_network):
    """Before any model is built, at native size: input size, crop, mean, std, interpolation of the tag."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch.model)
    backbone = TimmBackbone({"model": arch.model, "weights": "random"})
    dc = backbone.data_config()
    assert backbone.model is None
    assert tuple(dc["input_size"]) == tuple(cfg.input_size)
    assert tuple(dc["mean"]) == tuple(cfg.mean) and tuple(dc["std"]) == tuple(cfg.std)
    assert dc["interpolation"] == cfg.interpolation and dc["crop_pct"] == cfg.crop_pct
    assert backbone.describe()["pretrained_cfg"] == arch.model


@pytest.mark.parametrize(
    "name, expected",
    [
        ("vgg16", "vgg16.tv_in1k"),
        ("tf_efficientnet_b4", "tf_efficientnet_b4.ns_jft_in1k"),
        ("resnet50", "resnet50.a1_in1k"),
        ("eva02_large_patch14_448", "eva02_large_patch14_448.mim_in22k_ft_in22k_in1k"),
    ],
)
def test_bare_architecture_resolves_to_timm_default_tag(name, expected, no_network):
    backbone = TimmBackbone({"model": name, "weights": "random"})
    assert backbone.pretrained_cfg_name() == expected


def test_native_sizes_that_matter():
    """The tags whose native input is not 224: EfficientNet-B4 NS 380, BiT 448, EVA-02-L 448."""
    sizes = {a.id: TimmBackbone({"model": a.model, "weights": "random"}).data_config()["input_size"][1:] for a in ZOO}
    assert tuple(sizes["efficientnet_b4_ns"]) == (380, 380)
    assert tuple(sizes["bit_resnetv2_50x1"]) == (448, 448)
    assert tuple(sizes["eva02_large"]) == (448, 448)
    assert tuple(sizes["vgg16"]) == (224, 224)


def test_numerical_rank_matches_nullspace_rule():
    from sing_audit.nullspace import split_head

    rng = np.random.default_rng(0)
    for c, m, r in [(10, 30, 7), (30, 10, 10), (100, 120, 60), (5, 5, 0)]:
        w = (rng.normal(size=(c, r)) @ rng.normal(size=(r, m))).astype(np.float32).astype(np.float64)
        eps = float(np.finfo(np.float32).eps)
        assert numerical_rank(w, eps) == split_head(w, "rank", weight_eps=eps).rank == r
    w64 = rng.normal(size=(6, 9))
    assert numerical_rank(w64, float(np.finfo(np.float64).eps)) == 6


# --------------------------------------------------------------------------- sing_audit.testing itself


def test_testing_module_example_runs():
    import doctest

    import sing_audit.testing.contracts

    result = doctest.testmod(sing_audit.testing.contracts, raise_on_error=False, verbose=False)
    assert result.attempted >= 5 and result.failed == 0


@pytest.fixture(scope="module")
def deit_tiny():
    b = TimmBackbone({"model": "deit_tiny_distilled_patch16_224", "weights": "random", "img_size": 32})
    b.load("cpu")
    return b


class _AveragedTokens(TimmBackbone):
    """The classic mistake: timm's pre_logits (the mean of the two tokens) as features."""

    def features(self, images):
        with torch.no_grad():
            return self.model.forward_head(self.model.forward_features(images), pre_logits=True)


class _Cosine(TimmBackbone):
    """A model whose logits normalise the features: not f Wᵀ + b."""

    def logits(self, images):
        f = torch.nn.functional.normalize(self.features(images), dim=-1)
        return f @ torch.from_numpy(self.head().weight).float().T


class _Noisy(TimmBackbone):
    def features(self, images):
        return super().features(images) + 1e-3 * torch.randn(images.shape[0], self.head().num_features)


def _as(cls, loaded: TimmBackbone) -> TimmBackbone:
    b = cls({"model": loaded.options.model, "weights": "random", "img_size": loaded.options.img_size})
    b.model = loaded.model
    return b


@pytest.mark.parametrize(
    "cls, needle",
    [
        (_AveragedTokens, r"features\(images\) has shape \(2, 192\), expected \(2, 384\)"),
        (_Cosine, "differ from the model's logits"),
        (_Noisy, "features differ from the input of the head"),
    ],
    ids=["averaged-tokens", "cosine", "nondeterministic"],
)
def test_check_backbone_names_the_broken_contract(cls, needle, deit_tiny):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    broken = _as(cls, deit_tiny)
    with pytest.raises(AssertionError, match=needle):
        check_backbone(broken, images, head_module=broken.model.get_classifier())


def test_check_backbone_without_head_module_and_wrong_image_size(deit_tiny):
    images = torch.randn(2, 3, 32, 32)
    report = check_backbone(deit_tiny, images)
    assert report.feature_error is None and report.null_dim == 0 and report.num_features == 384
    with pytest.raises(AssertionError, match="null dimension is 0"):
        check_backbone(deit_tiny, images, expected_null_dim=5)
    with pytest.raises(AssertionError, match=r"transform\(\) gives images of shape \(3, 32, 32\)"):
        check_backbone(deit_tiny, torch.nn.functional.interpolate(images, size=48))
