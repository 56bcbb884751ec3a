"""The linear-evaluation protocols of DINO and DINOv2 (see :mod:`sing_audit_timm.dino_vit`):
how each builds the classifier input (:data:`LAYOUTS`), which one a model and head file
follow, and the published head files themselves.

Layouts (``B`` batch, ``D`` embed dim; every token below has gone through the model's
*final* norm, as both projects' ``get_intermediate_layers`` apply it to every block):

``dino_last4_cls`` (DINO ViT-S/16, ViT-S/8; ``4D``)
    class tokens of the last 4 blocks, concatenated oldest first. facebookresearch/dino
    ``eval_linear.py`` ``validate_network``: ``torch.cat([x[:, 0] for x in
    intermediate_output], dim=-1)`` with ``--n_last_blocks 4 --avgpool_patchtokens false``.
``dino_cls_avgpool`` (DINO ViT-B/16, ViT-B/8; ``2D``)
    class token and mean patch token of the last block, **interleaved**
    ``[c0, p0, c1, p1, …]``: the same function stacks them on a new last axis,
    ``torch.cat((output.unsqueeze(-1), mean.unsqueeze(-1)), dim=-1)``, then flattens with
    ``reshape(B, -1)`` (``--n_last_blocks 1 --avgpool_patchtokens true``).
``dinov2_linear`` (DINOv2 ``*_linear_head.pth``; ``2D``)
    ``[class token, mean patch token]`` of the last block, concatenated; the mean skips
    register tokens. facebookresearch/dinov2 ``dinov2/hub/classifiers.py``
    ``_LinearClassifierWrapper.forward`` (``layers == 1``: ``x_norm_clstoken``,
    ``x_norm_patchtokens.mean``) and ``dinov2/eval/linear.py`` ``create_linear_input``.
``dinov2_linear4`` (DINOv2 ``*_linear4_head.pth``; ``5D``)
    class tokens of the last 4 blocks, then the mean patch token (registers skipped) of
    the last block, concatenated (``_LinearClassifierWrapper.forward``, ``layers == 4``;
    ``get_intermediate_layers(x, n=4, return_class_token=True)``, ``norm=True``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sing_audit.errors import ConfigError, HeadError, WeightsError
from sing_audit.weights import load_state_dict
from sing_audit.terminal import close_matches

__all__ = [
    "LAYOUTS",
    "Layout",
    "LayoutName",
    "check_pretrained_is_dino",
    "choose_layout",
    "find_head_file",
    "layout_from_head_key",
    "linear_from_head",
    "random_linear",
    "official_head_url",
    "read_linear_head",
    "vit_size",
]


@dataclass(frozen=True)
class Layout:
    """How one project's linear evaluation builds the classifier input."""

    name: str
    family: str  # "dino" or "dinov2"
    n_blocks: int  # class tokens of the last n blocks
    avgpool: bool  # + the mean patch token of the last block
    interleave: bool  # DINO's avgpool layout: [c0, p0, c1, p1, ...]
    summary: str

    @property
    def multiple(self) -> int:
        """Feature dimension / embed dimension."""
        return self.n_blocks + int(self.avgpool)


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("dino_last4_cls", "dino", 4, False, False,
               "class tokens of the last 4 blocks, concatenated (DINO ViT-S)"),
        Layout("dino_cls_avgpool", "dino", 1, True, True,
               "class token and mean patch token of the last block, interleaved (DINO ViT-B)"),
        Layout("dinov2_linear", "dinov2", 1, True, False,
               "class token + mean patch token (no registers) of the last block, concatenated (DINOv2 linear)"),
        Layout("dinov2_linear4", "dinov2", 4, True, False,
               "class tokens of the last 4 blocks + mean patch token (no registers) of the last block, "
               "concatenated (DINOv2 linear4)"),
    )
}

LayoutName = Literal["dino_last4_cls", "dino_cls_avgpool", "dinov2_linear", "dinov2_linear4"]


# --------------------------------------------------------------------------- head files and protocols


def read_linear_head(path: Path, head_key: str | None = None):
    """``(weight c×m, bias c, key)`` tensors from a published linear-head file.

    Nesting under ``state_dict`` / ``model`` and a DDP ``module.`` prefix are removed by
    :func:`sing_audit.weights.load_state_dict` (read without pickle). ``key`` is the prefix
    of the weight inside the file (``""``, ``"linear"``, a DINOv2 classifier name).
    """
    sd = load_state_dict(path)
    if head_key is not None:
        prefix = head_key.strip().strip(".")
        prefix = f"{prefix}." if prefix else ""
        if f"{prefix}weight" not in sd:
            candidates = sorted(k[: -len("weight")].rstrip(".") for k in sd if k.endswith("weight"))
            close = close_matches(prefix.rstrip("."), candidates, n=3, cutoff=0.5)
            listing = ", ".join(repr(c) for c in (close or candidates[:8])) or "none"
            raise WeightsError(f"head file {path} has no {prefix}weight (head_key {head_key!r}); weights in it: {listing}")
        prefixes = [prefix]
    else:
        prefixes = [k[: -len("weight")] for k in sd if k.endswith("weight") and getattr(sd[k], "ndim", 0) == 2]
        prefixes = [p for p in prefixes if p == "" or p.endswith(".")]
        if not prefixes:
            raise WeightsError(
                f"head file {path} holds no 2-D weight (keys: {', '.join(sorted(sd)[:8])}); expected DINO's "
                "*_linearweights.pth ({'state_dict': {'module.linear.weight', 'module.linear.bias'}}) or DINOv2's "
                "*_linear_head.pth ({'weight', 'bias'})"
            )
        if len(prefixes) > 1:
            names = ", ".join(repr(p.rstrip(".")) for p in sorted(prefixes)[:10])
            more = f", … {len(prefixes) - 10} more" if len(prefixes) > 10 else ""
            raise WeightsError(
                f"head file {path} holds {len(prefixes)} linear classifiers ({names}{more}); choose one with "
                "head_key (e.g. the best classifier named in DINOv2's results_eval_linear.json)"
            )
    prefix = prefixes[0]
    weight = sd[f"{prefix}weight"]
    bias = sd.get(f"{prefix}bias")
    if weight.ndim != 2:
        raise WeightsError(f"head file {path}: {prefix}weight has shape {list(weight.shape)}, expected classes × features")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise WeightsError(
            f"head file {path}: {prefix}bias has shape {list(bias.shape)}, expected [{weight.shape[0]}] to match the weight"
        )
    if not weight.dtype.is_floating_point:
        raise WeightsError(f"head file {path}: {prefix}weight has dtype {weight.dtype}, not a floating-point type")
    return weight, bias, prefix.rstrip(".")


def find_head_file(spec: str, base_dir: Path | None) -> Path:
    """The linear head file ``spec`` names (relative paths from the config's folder ``base_dir``);
    a :class:`WeightsError` when it is missing or ``pretrained`` (heads are never downloaded)."""
    if spec.lower() == "pretrained":
        raise WeightsError(
            "dino_vit does not download linear heads: download the head of your model from the project "
            "(e.g. https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_linear4_head.pth or "
            "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_linearweights.pth) "
            "and set head: <path to the file>"
        )
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = (Path(base_dir) if base_dir is not None else Path.cwd()) / path
    path = path.resolve()
    if not path.is_file():
        where = " (relative paths are taken from the config file's folder)" if base_dir else ""
        raise WeightsError(
            f"linear head file not found: {path}{where}; a DINO backbone has no classifier of its own, so "
            "head must name the project's published linear head (or random, for pipeline checks only)"
        )
    return path


def linear_from_head(weight, bias):
    """An ``nn.Linear`` holding a head file's ``weight`` and ``bias``, in their dtype."""
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None).to(weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def random_linear(dim: int, num_classes: int, seed: int):
    """A random head as DINO's ``LinearClassifier`` initialises one: N(0, 0.01), zero bias."""
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        linear = nn.Linear(dim, num_classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 0.01)
        linear.bias.zero_()
    return linear


def layout_from_head_key(head_key: str | None) -> str | None:
    """DINOv2 ``eval/linear.py`` names classifiers ``classifier_{n}_blocks_avgpool_{avgpool}_lr_…``."""
    if not head_key:
        return None
    m = re.search(r"classifier_(\d+)_blocks_avgpool_(True|False)", head_key)
    if not m:
        return None
    n, avgpool = int(m.group(1)), m.group(2) == "True"
    for layout in LAYOUTS.values():
        if layout.family == "dinov2" and layout.n_blocks == n and layout.avgpool == avgpool:
            return layout.name
    raise ConfigError(
        f"head_key {head_key!r} names a DINOv2 classifier on {n} block(s) with avgpool={avgpool}; only the "
        "published protocols (avgpool True with 1 or 4 blocks) are supported"
    )


_DINO_V1_HEADS = {
    ("small", 16): "dino_deitsmall16_pretrain/dino_deitsmall16_linearweights.pth",
    ("small", 8): "dino_deitsmall8_pretrain/dino_deitsmall8_linearweights.pth",
    ("base", 16): "dino_vitbase16_pretrain/dino_vitbase16_linearweights.pth",
    ("base", 8): "dino_vitbase8_pretrain/dino_vitbase8_linearweights.pth",
}


def vit_size(arch: str) -> str | None:
    for size in ("small", "base", "large", "giant"):
        if f"vit_{size}_" in arch:
            return size
    return None


def official_head_url(model: str, layout: str) -> str | None:
    """Where each project publishes the linear head for ``model`` under ``layout`` (for messages)."""
    arch = model.partition(".")[0]
    size = vit_size(arch)
    m = re.search(r"patch(\d+)", arch)
    patch = int(m.group(1)) if m else None
    if layout.startswith("dinov2"):
        if size is None or patch != 14:
            return None
        base = f"dinov2_vit{size[0]}14"
        full = base + ("_reg4" if "reg4" in arch else "")
        four = "4" if layout == "dinov2_linear4" else ""
        return f"https://dl.fbaipublicfiles.com/dinov2/{base}/{full}_linear{four}_head.pth"
    rel = _DINO_V1_HEADS.get((size, patch)) if size else None
    return f"https://dl.fbaipublicfiles.com/dino/{rel}" if rel else None


def choose_layout(o, meta, head, family: str | None, arch: str, head_path) -> tuple[str, str]:
    """``(layout name, how it was chosen)`` for a ``dino_vit`` backbone's options ``o``, its
    architecture ``meta`` (weights on the meta device), its ``head`` tensors (``None``: a
    random head), the ``family`` its name says (``dino``, ``dinov2`` or ``None``) and its
    ``arch``; errors say what to set when it is ambiguous."""
    dim = int(meta.embed_dim)
    in_features = None if head is None else int(head[0].shape[1])
    choices = ", ".join(LAYOUTS)
    if o.layout is not None:
        name, how = o.layout, "option"
    elif (from_key := layout_from_head_key(o.head_key)) is not None:
        name, how = from_key, "head_key"
    else:
        if family == "dinov2":
            if in_features is None:
                name, how = "dinov2_linear4", "default (DINOv2 hub: layers=4)"
            else:
                fits = [n for n, lay in LAYOUTS.items() if lay.family == "dinov2" and lay.multiple * dim == in_features]
                if not fits:
                    raise HeadError(
                        f"the head in {head_path} takes {in_features} features, but {o.model!r} (embed dim "
                        f"{dim}) gives {2 * dim} (dinov2_linear) or {5 * dim} (dinov2_linear4); is it the head of "
                        "another model size?"
                    )
                name, how = fits[0], "head shape"
        elif family == "dino":
            size = vit_size(arch)
            if size == "small":
                name = "dino_last4_cls"
            elif size == "base":
                name = "dino_cls_avgpool"
            else:
                raise ConfigError(
                    f"DINO published linear protocols for ViT-S and ViT-B only; set layout for {o.model!r} "
                    f"(one of {choices})"
                )
            how = "model name (DINO README: ViT-S n_last_blocks=4, ViT-B n_last_blocks=1 + avgpool)"
        else:
            raise ConfigError(
                f"cannot tell which linear-evaluation protocol {o.model!r} follows: the name is neither a DINOv2 "
                "model (…_dinov2) nor tagged .dino; set layout to one of "
                f"{choices} (DINO ViT-S: dino_last4_cls, DINO ViT-B: dino_cls_avgpool, DINOv2: dinov2_linear "
                "for *_linear_head.pth or dinov2_linear4 for *_linear4_head.pth)"
            )
    layout = LAYOUTS[name]
    if layout.family == "dino" and int(getattr(meta, "num_reg_tokens", 0) or 0) > 0:
        raise ConfigError(
            f"layout {name} is DINO's, whose patch average is over every token after the class token; "
            f"{o.model!r} has register tokens: use dinov2_linear or dinov2_linear4"
        )
    if in_features is not None and in_features != layout.multiple * dim:
        fits = [n for n, lay in LAYOUTS.items() if lay.multiple * dim == in_features]
        hint = f"; the shape fits layout {' or '.join(fits)}" if fits else "; is it the head of another model size?"
        raise HeadError(
            f"the head in {head_path} takes {in_features} features, but layout {name} on {o.model!r} "
            f"(embed dim {dim}) gives {layout.multiple} × {dim} = {layout.multiple * dim}{hint}"
        )
    return name, how


def check_pretrained_is_dino(name: str, family: str) -> None:
    """A :class:`WeightsError` unless timm's pretrained weights ``name`` are the ``family``'s
    (``dino``: a ``dino*`` tag; ``dinov2``: a DINOv2 architecture). Read from what the
    installed timm version registers (:mod:`sing_audit.name_lists`: no import)."""
    from .pretrained import arch_pretrained_cfg, list_pretrained

    cfg = arch_pretrained_cfg(name)
    tag = (cfg or {}).get("tag") or name.partition(".")[2]
    ok = ("dinov2" in name.partition(".")[0]) if family == "dinov2" else tag.split("_")[0] == "dino"
    if cfg is None or not cfg.get("has_weights") or not ok:
        arch = name.partition(".")[0]
        dino = [n for n in list_pretrained(arch) if "dino" in n]
        hint = f"use {' or '.join(dino)}" if dino else "use a local weights file"
        raise WeightsError(
            f"the pretrained weights timm gives for {name!r} are not {family.upper()}'s; {hint}, "
            "or set weights: <local file>"
        )
