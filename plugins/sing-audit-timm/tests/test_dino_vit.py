"""The DINO ViT wrapper: each project's linear-evaluation features, checked against an
independent reference built from the model's blocks, and heads in each project's file format.

Random heads alone cannot catch a wrong layout (any layout satisfies ``logits == f Wᵀ + b``
for its own ``f``), so every head here is checked against logits computed from reference
features, and plausible wrong layouts are shown to give different logits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from sing_audit.errors import ConfigError, HeadError, WeightsError
from sing_audit.pipeline.extraction import check_head_reproduces_logits
from sing_audit_timm.dino_layouts import LAYOUTS, official_head_url
from sing_audit_timm.dino_vit import DinoViTBackbone
from sing_audit.testing import check_backbone
from sing_audit.weights import file_digest

NUM_CLASSES = 10


# --------------------------------------------------------------------------- models


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Informative norms, tokens and layer scales (linear layers keep PyTorch's random init).

    timm's own init leaves LayerNorms at (1, 0), register tokens at 0 and DINOv2's layer
    scales at 1e-5 (blocks ≈ identity): layouts would then be hard to tell apart.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.5 + 0.1 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif name in ("cls_token", "reg_token", "register_tokens", "pos_embed"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model.eval()


def _vit(name: str, img_size: int, seed: int) -> nn.Module:
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size, weight_init="skip")
    return _randomize(model, seed)


def _save_backbone(model: nn.Module, path) -> str:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("dino")


# (timm name used in the options, architecture, input size, seed)
MODELS = {
    "dino_s16": ("vit_small_patch16_224.dino", "vit_small_patch16_224", 32, 1),
    "dino_b8": ("vit_base_patch8_224.dino", "vit_base_patch8_224", 24, 2),
    "dinov2_s14": ("vit_small_patch14_dinov2.lvd142m", "vit_small_patch14_dinov2", 28, 3),
    "dinov2_s14_reg": ("vit_small_patch14_reg4_dinov2.lvd142m", "vit_small_patch14_reg4_dinov2", 28, 4),
}


@pytest.fixture(scope="module")
def models(store):
    """Random-init real architectures at a small native size, saved to local files once."""
    out = {}
    for key, (name, arch, size, seed) in MODELS.items():
        model = _vit(arch, size, seed)
        out[key] = (name, model, _save_backbone(model, store / f"{key}.safetensors"), size)
    return out


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return {size: torch.randn(3, 3, size, size, generator=g) for size in (24, 28, 32)}


@pytest.fixture(scope="module")
def tokens(models, images):
    """Every block's output on the test images, once per model (see reference_tokens)."""
    out = {}
    for key, (_, model, _, size) in models.items():
        with torch.no_grad():
            out[key] = reference_tokens(model, images[size])
    return out


# --------------------------------------------------------------------------- the reference


def reference_tokens(model, x):
    """Block outputs through timm's own embedding path (no interpolation at the native size)."""
    t = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    outs = []
    for blk in model.blocks:
        t = blk(t)
        outs.append(t)
    return outs


def reference_features(model, x, layout: str, outs=None):
    """Each project's evaluation code, restated: every block output goes through the final norm."""
    with torch.no_grad():
        outs = reference_tokens(model, x) if outs is None else outs
        r = model.num_prefix_tokens  # class token + registers
        if layout.startswith("dino_"):
            n, avgpool = (4, False) if layout == "dino_last4_cls" else (1, True)
            intermediate_output = [model.norm(o) for o in outs[-n:]]  # dino get_intermediate_layers
            output = torch.cat([x[:, 0] for x in intermediate_output], dim=-1)
            if avgpool:
                output = torch.cat(
                    (output.unsqueeze(-1), torch.mean(intermediate_output[-1][:, 1:], dim=1).unsqueeze(-1)), dim=-1
                )
                output = output.reshape(output.shape[0], -1)
            return output
        n = 4 if layout == "dinov2_linear4" else 1
        normed = [model.norm(o) for o in outs[-n:]]  # dinov2 get_intermediate_layers(norm=True)
        xs = tuple(zip([o[:, r:] for o in normed], [o[:, 0] for o in normed]))  # (patch tokens, class token)
        if n == 4:
            return torch.cat([xs[0][1], xs[1][1], xs[2][1], xs[3][1], xs[3][0].mean(dim=1)], dim=1)
        return torch.cat([xs[0][1], xs[0][0].mean(dim=1)], dim=1)


def wrong_features(model, outs, layout: str) -> dict[str, torch.Tensor]:
    """Plausible mistakes: each must change the logits."""
    with torch.no_grad():
        r = model.num_prefix_tokens
        normed = [model.norm(o) for o in outs]
        last = normed[-1]
        cls4 = [o[:, 0] for o in normed[-4:]]
        wrong = {}
        if layout == "dino_cls_avgpool":
            wrong["concatenated"] = torch.cat([last[:, 0], last[:, 1:].mean(1)], dim=-1)
            wrong["last block without final norm"] = torch.stack([outs[-1][:, 0], outs[-1][:, 1:].mean(1)], -1).flatten(1)
        elif layout == "dino_last4_cls":
            wrong["without final norm (timm get_intermediate_layers)"] = torch.cat([o[:, 0] for o in outs[-4:]], dim=-1)
            wrong["newest block first"] = torch.cat(cls4[::-1], dim=-1)
        elif layout == "dinov2_linear":
            wrong["interleaved"] = torch.stack([last[:, 0], last[:, r:].mean(1)], -1).flatten(1)
            wrong["patch mean without final norm"] = torch.cat([last[:, 0], outs[-1][:, r:].mean(1)], dim=-1)
        else:
            wrong["without final norm"] = torch.cat([o[:, 0] for o in outs[-4:]] + [outs[-1][:, r:].mean(1)], dim=-1)
            wrong["norm after averaging"] = torch.cat(cls4 + [model.norm(outs[-1][:, r:].mean(1))], dim=-1)
        if r > 1:  # registers: a mean over every token after the class token includes them
            if layout == "dinov2_linear":
                wrong["registers in the mean"] = torch.cat([last[:, 0], last[:, 1:].mean(1)], dim=-1)
            elif layout == "dinov2_linear4":
                wrong["registers in the mean"] = torch.cat(cls4 + [last[:, 1:].mean(1)], dim=-1)
        return wrong


# --------------------------------------------------------------------------- head files


class LinearClassifier(nn.Module):
    """DINO's eval_linear.LinearClassifier (a Linear named ``linear``)."""

    def __init__(self, dim, num_labels):
        super().__init__()
        self.linear = nn.Linear(dim, num_labels)


class DDP(nn.Module):
    """Stands in for DistributedDataParallel: parameters under ``module.``."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def _head_tensors(dim: int, seed: int, classes: int = NUM_CLASSES):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(classes, dim, generator=g) * 0.1, torch.randn(classes, generator=g)


def save_dino_head(path, weight, bias):
    """The layout of dino_*_linearweights.pth: eval_linear.py's save_dict around a DDP state dict."""
    clf = DDP(LinearClassifier(weight.shape[1], weight.shape[0]))
    with torch.no_grad():
        clf.module.linear.weight.copy_(weight)
        clf.module.linear.bias.copy_(bias)
    optimizer = torch.optim.SGD(clf.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 100, eta_min=0)
    torch.save(
        {"epoch": 100, "state_dict": clf.state_dict(), "optimizer": optimizer.state_dict(),
         "scheduler": scheduler.state_dict(), "best_acc": 78.2},
        path,
    )
    return path


def save_dinov2_head(path, weight, bias):
    """The layout of dinov2_*_linear{,4}_head.pth: an nn.Linear's state dict."""
    head = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    torch.save(head.state_dict(), path)
    return path


def _backbone(name, weights, head, **extra) -> DinoViTBackbone:
    return DinoViTBackbone(DinoViTBackbone.Options(model=name, weights=weights, head=head, **extra))


# every layout on a model of its family: (model key, layout, head format, explicit layout option?)
CASES = [
    ("dino_s16", "dino_last4_cls", "dino", False),
    ("dino_b8", "dino_cls_avgpool", "dino", False),
    ("dino_s16", "dino_cls_avgpool", "dino", True),
    ("dinov2_s14", "dinov2_linear", "dinov2", False),
    ("dinov2_s14", "dinov2_linear4", "dinov2", False),
    ("dinov2_s14_reg", "dinov2_linear", "dinov2", False),
    ("dinov2_s14_reg", "dinov2_linear4", "dinov2", False),
]


@pytest.mark.parametrize("key,layout,fmt,explicit", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_layout_matches_reference_and_wrong_layouts_do_not(key, layout, fmt, explicit, models, images, tokens, store):
    name, model, weights, size = models[key]
    x = images[size]
    outs = tokens[key]
    ref = reference_features(model, x, layout, outs).double()
    dim = model.embed_dim * LAYOUTS[layout].multiple
    assert ref.shape == (3, dim)
    with torch.no_grad():  # the reference's token path is timm's own forward
        torch.testing.assert_close(model.norm(outs[-1]), model.forward_features(x))

    # rows 0..NUM_CLASSES-1: a random head; the rest read one position each, where only the
    # right layout puts the value named next to it
    d = model.embed_dim
    with torch.no_grad():
        last = model.norm(outs[-1])
        cls_last, avg = last[:, 0], last[:, model.num_prefix_tokens:].mean(1)  # mean without registers
        cls_4th_last = model.norm(outs[-4])[:, 0]
    j = 5
    if layout == "dino_cls_avgpool":
        probes = {2 * j: cls_last[:, j], 2 * j + 1: avg[:, j]}
    elif layout == "dino_last4_cls":
        probes = {3 * d + j: cls_last[:, j], j: cls_4th_last[:, j]}
    elif layout == "dinov2_linear":
        probes = {j: cls_last[:, j], d + j: avg[:, j]}
    else:
        probes = {3 * d + j: cls_last[:, j], 4 * d + j: avg[:, j], j: cls_4th_last[:, j]}
    onehot = torch.zeros(len(probes), dim)
    for row, pos in enumerate(probes):
        onehot[row, pos] = 1.0
    weight, bias = _head_tensors(dim, seed=CASES.index((key, layout, fmt, explicit)))
    full_w, full_b = torch.cat([weight, onehot]), torch.cat([bias, torch.zeros(len(probes))])
    stem = f"{key}_{layout}"
    path = (save_dino_head if fmt == "dino" else save_dinov2_head)(store / f"{stem}_head.pth", full_w, full_b)
    b = _backbone(name, weights, str(path), img_size=size, **({"layout": layout} if explicit else {}))
    assert b.declared_feature_dim() == dim  # told before load, from the meta architecture and the layout
    b.load("cpu")
    assert b.layout().name == layout

    expected = ref @ weight.double().T + bias.double()
    logits = b.logits(x).double()
    f = b.features(x).double()
    torch.testing.assert_close(f, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[:, :NUM_CLASSES], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[:, NUM_CLASSES:], torch.stack(list(probes.values()), 1).double(), rtol=1e-5, atol=1e-5)
    head = b.head()
    assert head.weight.shape == (NUM_CLASSES + len(probes), dim)
    np.testing.assert_allclose(f.numpy() @ head.weight.T + head.bias, logits.numpy(), rtol=1e-4, atol=1e-4)
    assert check_backbone(b, x, head_module=b.linear).feature_error == 0.0  # sing_audit.testing's contract

    for what, wrong in wrong_features(model, outs, layout).items():
        assert wrong.shape == ref.shape, what
        gap = (wrong.double() @ weight.double().T + bias.double() - expected).abs().max().item()
        assert gap > 1e-2 * expected.abs().max().item(), f"{layout}: '{what}' gives the same logits ({gap:.2g})"


def test_dino_interleaving_is_not_concatenation(models, images, tokens):
    """The DINO ViT-B protocol, spelled out: [c0, p0, c1, p1, …]."""
    name, model, weights, size = models["dino_s16"]
    b = _backbone(name, weights, "random", img_size=size, layout="dino_cls_avgpool")
    b.load("cpu")
    x = images[size]
    f = b.features(x)
    head = b.head()
    check_head_reproduces_logits(b.features, b.logits, head.weight, head.bias, "dino")(x)  # the runner's check
    with torch.no_grad():
        last = model.norm(tokens["dino_s16"][-1])
    torch.testing.assert_close(f[:, 0::2], last[:, 0])
    torch.testing.assert_close(f[:, 1::2], last[:, 1:].mean(1))


# --------------------------------------------------------------------------- position embeddings


def original_interpolate_pos_encoding(pos_embed, w, h, patch, offset, antialias):
    """DINOv2's VisionTransformer.interpolate_pos_encoding (patch part), restated."""
    import math

    n = pos_embed.shape[1]
    m = int(math.sqrt(n))
    w0, h0 = w // patch, h // patch
    kwargs = {"scale_factor": ((w0 + offset) / m, (h0 + offset) / m)} if offset else {"size": (w0, h0)}
    p = F.interpolate(pos_embed.reshape(1, m, m, -1).permute(0, 3, 1, 2), mode="bicubic", antialias=antialias, **kwargs)
    return p.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])


@pytest.mark.parametrize("arch,reg", [("vit_small_patch14_dinov2", False), ("vit_small_patch14_reg4_dinov2", True)])
def test_position_embeddings_are_interpolated_as_the_original(arch, reg, store):
    """Native 56 px (4×4 patches), evaluated at 28 px: the original's interpolation, not timm's."""
    from timm.layers import resample_abs_pos_embed

    model = _vit(arch, 56, seed=7)
    weights = _save_backbone(model, store / f"{arch}_56.safetensors")
    b = _backbone(f"{arch}.lvd142m", weights, "random", img_size=28, layout="dinov2_linear")
    b.load("cpu")
    assert tuple(b.model.patch_embed.grid_size) == (4, 4)  # built at the file's grid
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    r = model.num_prefix_tokens
    with torch.no_grad():
        patch_pos = model.pos_embed[:, 0 if reg else 1:]
        ours = original_interpolate_pos_encoding(patch_pos, 28, 28, 14, 0.0 if reg else 0.1, antialias=reg)
        timms = resample_abs_pos_embed(patch_pos, new_size=(2, 2), old_size=(4, 4), num_prefix_tokens=0)
        if not reg:
            assert (ours - timms).abs().max() > 1e-3  # timm's resampling would change the features
        t = model.patch_embed.proj(x).flatten(2).transpose(1, 2) + ours
        prefix = [model.cls_token.expand(2, -1, -1)]
        if reg:
            prefix.append(model.reg_token.expand(2, -1, -1))
        else:
            prefix[0] = prefix[0] + model.pos_embed[:, :1]
        t = torch.cat(prefix + [t], dim=1)
        for blk in model.blocks:
            t = blk(t)
        t = model.norm(t)
        ref = torch.cat([t[:, 0], t[:, r:].mean(1)], dim=1)
    torch.testing.assert_close(b.features(x), ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- files in the originals' formats


def test_original_dinov2_checkpoint_layout_is_converted(models, images, tokens, store):
    """Meta's dinov2_vits14_reg4_pretrain.pth layout: register_tokens, mask_token, class position in pos_embed."""
    name, model, _, size = models["dinov2_s14_reg"]
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    original = {k: v for k, v in sd.items() if k not in ("reg_token", "pos_embed", "cls_token")}
    cls_pos = torch.randn(1, 1, model.embed_dim, generator=torch.Generator().manual_seed(3))
    original["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
    original["cls_token"] = sd["cls_token"] - cls_pos[:, 0]
    original["register_tokens"] = sd["reg_token"]
    original["mask_token"] = torch.zeros(1, model.embed_dim)
    path = store / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(original, path)
    b = _backbone(name, str(path), "random", img_size=size)
    b.load("cpu")
    x = images[size]
    torch.testing.assert_close(b.features(x), reference_features(model, x, "dinov2_linear4", tokens["dinov2_s14_reg"]), rtol=1e-5, atol=1e-5)


def test_dinov2_eval_checkpoint_with_head_key(models, images, tokens, store):
    """dinov2/eval/linear.py saves every classifier of its grid; head_key picks one and names its layout."""
    name, model, weights, size = models["dinov2_s14"]
    d = model.embed_dim
    w1, b1 = _head_tensors(2 * d, seed=11)
    w4, b4 = _head_tensors(5 * d, seed=12)
    k1 = "classifiers_dict.classifier_1_blocks_avgpool_True_lr_0_00100"
    k4 = "classifiers_dict.classifier_4_blocks_avgpool_True_lr_0_00500"
    path = store / "model_final.pth"
    torch.save({"model": {f"{k1}.linear.weight": w1, f"{k1}.linear.bias": b1,
                          f"{k4}.linear.weight": w4, f"{k4}.linear.bias": b4}, "iteration": 12500}, path)
    with pytest.raises(WeightsError, match="head_key"):
        _backbone(name, weights, str(path), img_size=size).describe()
    b = _backbone(name, weights, str(path), img_size=size, head_key=f"{k4}.linear")
    assert b.describe()["layout"] == "dinov2_linear4" and b.describe()["layout_source"] == "head_key"
    b.load("cpu")
    x = images[size]
    expected = reference_features(model, x, "dinov2_linear4", tokens["dinov2_s14"]) @ w4.T + b4
    torch.testing.assert_close(b.logits(x), expected, rtol=1e-4, atol=1e-4)


def test_safetensors_head(models, images, tokens, store):
    name, model, weights, size = models["dino_s16"]
    w, bias = _head_tensors(4 * model.embed_dim, seed=5)
    path = store / "head.safetensors"
    save_file({"weight": w, "bias": bias}, str(path))
    b = _backbone(name, weights, str(path), img_size=size)
    b.load("cpu")
    x = images[size]
    torch.testing.assert_close(b.logits(x), reference_features(model, x, "dino_last4_cls", tokens["dino_s16"]) @ w.T + bias, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- layouts from names and head shapes


def _dummy_head(store, name, dim, classes=NUM_CLASSES):
    w, b = _head_tensors(dim, seed=dim, classes=classes)
    return str(save_dinov2_head(store / name, w, b))


@pytest.mark.parametrize(
    "model,expected",
    [
        ("vit_small_patch16_224.dino", "dino_last4_cls"),
        ("vit_small_patch8_224.dino", "dino_last4_cls"),
        ("vit_base_patch16_224.dino", "dino_cls_avgpool"),
        ("vit_base_patch8_224.dino", "dino_cls_avgpool"),
        ("vit_large_patch14_dinov2.lvd142m", "dinov2_linear4"),
        ("vit_giant_patch14_reg4_dinov2.lvd142m", "dinov2_linear4"),
    ],
)
def test_layout_inferred_from_the_model_name(model, expected):
    b = _backbone(model, "random", "random")
    d = b.describe()
    assert d["layout"] == expected and b.model is None


def test_dinov2_layout_from_head_shape(store):
    lin = _dummy_head(store, "dinov2_vitl14_linear_head.pth", 2 * 1024)
    lin4 = _dummy_head(store, "dinov2_vitl14_linear4_head.pth", 5 * 1024)
    assert _backbone("vit_large_patch14_dinov2.lvd142m", "random", lin).describe()["layout"] == "dinov2_linear"
    assert _backbone("vit_large_patch14_dinov2.lvd142m", "random", lin4).describe()["layout"] == "dinov2_linear4"
    with pytest.raises(HeadError, match="another model size"):
        _backbone("vit_base_patch14_dinov2.lvd142m", "random", lin4).describe()
    with pytest.raises(HeadError, match="dinov2_linear4"):
        _backbone("vit_large_patch14_dinov2.lvd142m", "random", lin4, layout="dinov2_linear").describe()


def test_dino_head_of_the_other_protocol_is_named(store):
    """A ViT-S/16 head trained with avgpool (2×384 features) under the default last-4 layout."""
    path = _dummy_head(store, "other.pth", 2 * 384)
    with pytest.raises(HeadError, match="dino_cls_avgpool"):
        _backbone("vit_small_patch16_224.dino", "random", path).describe()


def test_ambiguous_name_needs_a_layout(monkeypatch):
    import huggingface_hub

    # the tag "dino" is not in any local cache: only the layout inference is under test here,
    # so pretend a network exists (offline, the constructor refuses the uncached tag)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ConfigError, match="set layout"):
        _backbone("vit_small_patch16_224", "random", "random").describe()
    b = _backbone("vit_small_patch16_224", "random", "random", layout="dino_last4_cls")
    assert b.describe()["layout_source"] == "option"
    assert _backbone("vit_small_patch16_224", "dino", "random").describe()["layout"] == "dino_last4_cls"


def test_dino_layout_on_a_register_model_is_refused():
    with pytest.raises(ConfigError, match="register"):
        _backbone("vit_small_patch14_reg4_dinov2.lvd142m", "random", "random", layout="dino_cls_avgpool").describe()


def test_unknown_or_unsuitable_models():
    with pytest.raises(ConfigError, match="no model named"):
        _backbone("vit_smal_patch16_224.dino", "random", "random").describe()
    with pytest.raises(ConfigError, match="class token"):
        _backbone("resnet50", "random", "random", layout="dino_last4_cls").describe()


# --------------------------------------------------------------------------- describe, heads, weights


def test_describe_before_load_is_a_cache_key(models, store):
    name, model, weights, size = models["dinov2_s14_reg"]
    head = _dummy_head(store, "dinov2_vits14_reg4_linear_head.pth", 2 * model.embed_dim)
    b = _backbone(name, weights, head, img_size=size)
    d = b.describe()
    assert json.loads(json.dumps(d)) == d and b.model is None
    assert d["plugin"] == "dino_vit" and d["layout"] == "dinov2_linear" and d["layout_source"] == "head shape"
    assert d["head"]["digest"] == file_digest(head) and d["head"]["shape"] == [NUM_CLASSES, 2 * model.embed_dim]
    assert d["weights_digest"] == file_digest(weights)
    assert d["random_weights"] is False
    assert d["preprocessing"] == {"resize": 32, "interpolation": "bicubic", "crop": 28,
                                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert "antialias" in d["pos_embed_interpolation"]
    b.load("cpu")
    assert b.describe() == d  # loading changes nothing the key depends on
    other = _dummy_head(store, "other_linear_head.pth", 2 * model.embed_dim, classes=NUM_CLASSES + 1)
    assert _backbone(name, weights, other, img_size=size).describe()["head"]["digest"] != d["head"]["digest"]


def test_random_backbone_and_head_are_explicit_and_seeded(models, images):
    name, _model, weights, size = models["dino_s16"]
    b = _backbone(name, "random", "random", img_size=size, num_classes=7)
    assert b.random_weights is True and b.describe()["random_weights"] is True
    state = torch.random.get_rng_state()
    b.load("cpu")
    assert torch.equal(state, torch.random.get_rng_state())
    again = _backbone(name, "random", "random", img_size=size, num_classes=7)
    again.load("cpu")
    assert again.weights_digest == b.weights_digest
    np.testing.assert_array_equal(again.head().weight, b.head().weight)
    assert b.head().weight.shape == (7, 4 * 384)
    # a random head on trained weights still makes the run a pipeline check
    h = _backbone(name, weights, "random", img_size=size)
    assert h.random_weights is True and h.describe()["random_backbone"] is False


def test_transform_is_the_evaluation_transform(models):
    from PIL import Image

    name, _, weights, _size = models["dino_s16"]
    b = _backbone(name, weights, "random", img_size=224)
    t = b.transform()
    assert [type(s).__name__ for s in t.transforms] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert t.transforms[0].size == 256 and t.transforms[1].size == (224, 224)
    assert t.transforms[0].interpolation.value == "bicubic"
    x = t(Image.new("RGB", (300, 260), (200, 10, 30)))
    assert tuple(x.shape) == (3, 224, 224)


def test_missing_head_file_and_pretrained_head(tmp_path):
    with pytest.raises(WeightsError, match="linear head file not found"):
        _backbone("vit_small_patch16_224.dino", "random", "nowhere/head.pth", base_dir=tmp_path).describe()
    with pytest.raises(WeightsError, match="dl.fbaipublicfiles.com"):
        _backbone("vit_small_patch16_224.dino", "random", "pretrained").describe()
    with pytest.raises(Exception, match="head"):
        DinoViTBackbone.Options(model="vit_small_patch16_224.dino", weights="random")


def test_head_file_that_is_not_a_linear_head(store):
    path = store / "notahead.pth"
    torch.save({"something": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="no 2-D weight"):
        _backbone("vit_small_patch16_224.dino", "random", str(path)).describe()


def test_backbone_file_of_another_architecture_is_refused(models, store):
    _name, _model, weights, size = models["dino_s16"]
    with pytest.raises(WeightsError, match="do not match"):
        _backbone("vit_base_patch16_224.dino", weights, "random", img_size=size).load("cpu")


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_pretrained_offline_is_an_error_at_validation_not_a_fallback(offline):
    with pytest.raises(WeightsError, match="offline"):
        _backbone("vit_small_patch16_224.dino", "pretrained", "random", img_size=32)


def test_pretrained_weights_that_are_not_dino_are_refused():
    """vit_small_patch16_224 without a tag would load timm's supervised weights."""
    with pytest.raises(WeightsError, match=r"vit_small_patch16_224\.dino"):
        _backbone("vit_small_patch16_224", "pretrained", "random", layout="dino_last4_cls")


def test_official_head_urls():
    """The URLs each project's code builds (dino/utils.py, dinov2/hub/classifiers.py)."""
    assert official_head_url("vit_small_patch16_224.dino", "dino_last4_cls") == (
        "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_linearweights.pth"
    )
    assert official_head_url("vit_base_patch8_224.dino", "dino_cls_avgpool") == (
        "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_linearweights.pth"
    )
    assert official_head_url("vit_large_patch14_dinov2.lvd142m", "dinov2_linear4") == (
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_linear4_head.pth"
    )
    assert official_head_url("vit_giant_patch14_reg4_dinov2.lvd142m", "dinov2_linear") == (
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitg14/dinov2_vitg14_reg4_linear_head.pth"
    )


def test_registered_under_its_name():
    from sing_audit.host import create_registry

    assert create_registry().get("backbone", "dino_vit").factory is DinoViTBackbone


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_dino_vit_end_to_end_audit(tmp_path, models):
    """An audit over a tiny image folder: local backbone file + a DINO-format ImageNet head."""
    from sing_audit.cli import main
    from sing_audit.synthetic import SYNSETS, write_image_folder

    from sing_audit.testing import PIPELINE_POLICY, write_config

    name, model, weights, size = models["dino_s16"]
    root = write_image_folder(tmp_path / "val", per_class=4, size=40)
    w, bias = _head_tensors(4 * model.embed_dim, seed=21, classes=1000)
    head = save_dino_head(tmp_path / "dino_deitsmall16_linearweights.pth", w, bias)
    ids = [f"{s}/{s}_{i}.png" for s in SYNSETS for i in range(4)]
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", image_embeddings=rng.normal(size=(len(ids), 8)).astype(np.float32),
             text_embeddings=rng.normal(size=(1000, 8)).astype(np.float32), image_ids=np.array(ids))
    cfg = write_config(tmp_path, {
        "output": "out",
        "dataset": {"plugin": "image_folder", "root": str(root)},
        "target": {"plugin": "precomputed", "path": "t.npz"},
        "backbones": [{"name": "dino", "plugin": "dino_vit", "model": name, "weights": weights,
                       "head": head.name, "img_size": size}],
        "policy": PIPELINE_POLICY,
        "run": {"device": "cpu", "folds": 2, "bootstrap": 100},
        "report": {"formats": ["json"]},
    })
    assert main(["run", str(cfg)]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    m = res["models"][0]
    assert m["name"] == "dino" and m["n_images"] == 12 and m["random_weights"] is False
    assert m["null_dim"] == 4 * 384 - 1000
    assert m["logit_drift"]["relative_max"] < 1e-6
    assert {c["name"] for c in m["classes"]} == {"tench", "goldfish", "great white shark"}


# --------------------------------------------------------------------------- against the original code (opt-in)


def _original_repo(var: str):
    import os
    from pathlib import Path

    path = os.environ.get(var)
    if not path or not Path(path).is_dir():
        pytest.skip(f"set {var} to a checkout of the original repository to compare with its own code")
    return path


@pytest.mark.slow
def test_against_meta_dinov2_code(tmp_path, monkeypatch):
    """DINOv2's own ViT and hub linear classifier (``DINOV2_REPO``=a checkout of facebookresearch/dinov2),
    at 224 px on a 518 px model: position interpolation, registers, checkpoint conversion, layouts."""
    monkeypatch.syspath_prepend(_original_repo("DINOV2_REPO"))
    from dinov2.hub.classifiers import _LinearClassifierWrapper
    from dinov2.models import vision_transformer as v2

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for reg in (0, 4):
        interp = {"interpolate_antialias": True, "interpolate_offset": 0.0} if reg else {}
        model = _randomize(v2.vit_small(patch_size=14, img_size=518, init_values=1.0, block_chunks=0,
                                        num_register_tokens=reg, **interp), reg)
        torch.save(model.state_dict(), tmp_path / "backbone.pth")
        name = "vit_small_patch14_reg4_dinov2.lvd142m" if reg else "vit_small_patch14_dinov2.lvd142m"
        for layers in (1, 4):
            w, bias = _head_tensors((1 + layers) * 384, seed=layers)
            save_dinov2_head(tmp_path / "head.pth", w, bias)
            head = nn.Linear((1 + layers) * 384, NUM_CLASSES)
            head.load_state_dict(torch.load(tmp_path / "head.pth", weights_only=True))
            with torch.no_grad():
                ref = _LinearClassifierWrapper(backbone=model, linear_head=head, layers=layers).eval()(x)
            b = _backbone(name, str(tmp_path / "backbone.pth"), str(tmp_path / "head.pth"))
            b.load("cpu")
            torch.testing.assert_close(b.logits(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_against_meta_dino_code(tmp_path, monkeypatch):
    """DINO's own ViT (``DINO_REPO``=a checkout of facebookresearch/dino) with eval_linear's feature lines."""
    monkeypatch.syspath_prepend(_original_repo("DINO_REPO"))
    import vision_transformer as v1

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for arch, n, avgpool, name in [("vit_small", 4, False, "vit_small_patch16_224.dino"),
                                   ("vit_base", 1, True, "vit_base_patch16_224.dino")]:
        model = _randomize(v1.__dict__[arch](patch_size=16, num_classes=0), 7)
        torch.save(model.state_dict(), tmp_path / "backbone.pth")
        for size in (224, 160):
            xx = x[:, :, :size, :size]
            with torch.no_grad():  # eval_linear.validate_network
                intermediate_output = model.get_intermediate_layers(xx, n)
                output = torch.cat([t[:, 0] for t in intermediate_output], dim=-1)
                if avgpool:
                    output = torch.cat((output.unsqueeze(-1), torch.mean(intermediate_output[-1][:, 1:], dim=1).unsqueeze(-1)), dim=-1)
                    output = output.reshape(output.shape[0], -1)
            w, bias = _head_tensors(output.shape[1], seed=size)
            save_dino_head(tmp_path / "head.pth", w, bias)
            b = _backbone(name, str(tmp_path / "backbone.pth"), str(tmp_path / "head.pth"), img_size=size)
            b.load("cpu")
            torch.testing.assert_close(b.logits(xx), output @ w.T + bias, rtol=1e-5, atol=1e-5)
