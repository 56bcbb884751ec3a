"""DINO and DINOv2 ViTs with the linear heads of each project's linear evaluation.

The self-supervised checkpoints in timm have no classifier. Each project trained linear
classifiers on frozen features it builds in its own way, and published them; this
backbone rebuilds those features exactly and loads the published head file.

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

Position embeddings are interpolated as the original models do at run time (timm's own
resampling differs): bicubic with the ``+0.1`` scale-factor offset and no antialiasing
for DINO and DINOv2, bicubic to the exact size with antialiasing for DINOv2 with
registers (``interpolate_offset=0.0, interpolate_antialias=True`` in
``dinov2/hub/classifiers.py``). Preprocessing is both projects' evaluation transform:
resize the short side to ``img_size·256/224`` (bicubic), centre crop ``img_size``,
ImageNet mean and std.

Head files: DINO's ``*_linearweights.pth`` (``{"state_dict": {"module.linear.weight",
"module.linear.bias"}, …}``), DINOv2's ``*_linear_head.pth`` / ``*_linear4_head.pth``
(``{"weight", "bias"}``), a DINOv2 ``eval/linear.py`` checkpoint with ``head_key`` naming
one classifier, or the same tensors as ``.safetensors``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from sing_audit.components import ImageBackbone, LinearHead, ModelOptions
from sing_audit.errors import ConfigError, HeadError, WeightsError, exception_summary
from sing_audit.hookspecs import hookimpl
from sing_audit.imagenet import IMAGENET_MEAN, IMAGENET_STD
from sing_audit.transforms import resize_crop_transform
from sing_audit.weights import (
    ResolvedWeights,
    file_digest,
    hub_offline,
    load_into,
    load_state_dict,
    resolve_weights,
    state_dict_digest,
)

from .backbone import TimmBackbone
from .classes import imagenet_class_info

__all__ = ["LAYOUTS", "DinoViTBackbone", "Layout", "official_head_url", "read_linear_head"]

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


# --------------------------------------------------------------------------- head files


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
            close = difflib.get_close_matches(prefix.rstrip("."), candidates, n=3, cutoff=0.5)
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


def _layout_from_head_key(head_key: str | None) -> str | None:
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


def _size_of(arch: str) -> str | None:
    for size in ("small", "base", "large", "giant"):
        if f"vit_{size}_" in arch:
            return size
    return None


def official_head_url(model: str, layout: str) -> str | None:
    """Where each project publishes the linear head for ``model`` under ``layout`` (for messages)."""
    arch = model.partition(".")[0]
    size = _size_of(arch)
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


# --------------------------------------------------------------------------- position embeddings


def interpolate_patch_pos_embed(pos, native_grid: tuple[int, int], grid: tuple[int, int], image_hw: tuple[int, int], mode: str):
    """Patch position embeddings (1×N×D, native grid) for ``grid``, as the original models do.

    ``mode="offset"``: DINO / DINOv2 ``interpolate_pos_encoding``: bicubic with scale
    factor ``(n + 0.1) / N``, no antialiasing. ``mode="size"``: DINOv2 with registers
    (``interpolate_offset=0``): bicubic to the exact size, antialiased. Like the
    originals, nothing is interpolated when the token count matches and the image is square.
    """
    import torch.nn.functional as F

    gh, gw = native_grid
    h, w = grid
    if h * w == gh * gw and image_hw[0] == image_hw[1]:
        return pos
    dim = pos.shape[-1]
    p = pos.float().reshape(1, gh, gw, dim).permute(0, 3, 1, 2)
    if mode == "offset":
        p = F.interpolate(p, scale_factor=((h + 0.1) / gh, (w + 0.1) / gw), mode="bicubic", antialias=False)
    else:
        p = F.interpolate(p, size=(h, w), mode="bicubic", antialias=True)
    if tuple(p.shape[-2:]) != (h, w):  # pragma: no cover - guarded by the offset
        raise RuntimeError(f"position embedding interpolated to {tuple(p.shape[-2:])}, expected {(h, w)}")
    return p.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos.dtype)


# --------------------------------------------------------------------------- the backbone


class DinoViTBackbone(ImageBackbone):
    """A DINO/DINOv2 ViT from timm + the linear head of its project's linear evaluation."""

    class Options(ModelOptions):
        model: str = Field(
            min_length=1,
            description="timm name: vit_small_patch16_224.dino, vit_base_patch8_224.dino, "
            "vit_large_patch14_dinov2.lvd142m, vit_small_patch14_reg4_dinov2.lvd142m, …",
        )
        head: str = Field(
            min_length=1,
            description="the linear head file (DINO *_linearweights.pth, DINOv2 *_linear_head.pth / "
            "*_linear4_head.pth, or .safetensors), or random (pipeline checks only)",
        )
        layout: LayoutName | None = Field(
            None,
            description="how features are built: dino_last4_cls | dino_cls_avgpool | dinov2_linear | "
            "dinov2_linear4 (default: inferred from the model name and the head file)",
        )
        head_key: str | None = Field(None, description="prefix of weight/bias in a head file holding several classifiers")
        img_size: int = Field(224, ge=8, description="centre-crop size (resize: img_size·256/224)")
        num_classes: int = Field(1000, ge=1, description="classes of a random head (head: random only)")

        @field_validator("head")
        @classmethod
        def _strip_head(cls, v: str) -> str:
            v = v.strip()
            if not v:
                raise ValueError("must not be empty")
            return v

    plugin_name = "dino_vit"

    def __init__(self, options: DinoViTBackbone.Options | dict[str, Any]) -> None:
        if not isinstance(options, self.Options):
            options = self.Options.model_validate(options)
        self.options = options
        self.model = None
        self.linear = None
        self.device = "cpu"
        self.weights_digest: str | None = None
        self._resolved: ResolvedWeights | None = None
        self._head_path: Path | None = None
        self._head_digest: str | None = None
        self._head_tensors = None
        self._meta_model = None
        self._layout: tuple[str, str] | None = None
        self.random_head = options.head.lower() == "random"
        self.random_backbone = options.weights.strip().lower() == "random"
        self.random_weights = self.random_head or self.random_backbone
        self.validate()

    def validate(self) -> None:
        """Check the options without building the model (no network): errors at validation time.

        The model name and tag, the weights and head files, the layout (from the option, the
        model name or the head's shape: see :meth:`_resolve_layout`), and that pretrained
        weights are DINO's and — when the hub is known to be offline — in the local cache.
        Called by the constructor.
        """
        self._check_model_name()
        w = self.resolved_weights
        _ = self.head_path
        self._resolve_layout()
        if w.kind in ("pretrained", "tag"):
            name = self._pretrained_name()
            self._check_pretrained_is_dino(name)
            if hub_offline():
                TimmBackbone({"model": name, "weights": "pretrained"})  # raises when not in the local cache

    def _pretrained_name(self) -> str:
        arch, tag = self._arch_and_tag()
        return f"{arch}.{tag}" if tag else arch

    # ------------------------------------------------------------------ names

    def _arch_and_tag(self) -> tuple[str, str | None]:
        arch, _, tag = self.options.model.partition(".")
        w = self.resolved_weights
        if w.kind == "tag":
            if tag and tag != w.value:
                raise WeightsError(
                    f"model {self.options.model!r} already names tag {tag!r} but weights asks for {w.value!r}; "
                    "give the tag in one place only"
                )
            tag = w.value
        return arch, (tag or None)

    def _check_model_name(self) -> None:
        import timm

        arch, tag = self._arch_and_tag()
        if self.options.model.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
            raise ConfigError(
                "dino_vit takes a timm architecture name (e.g. vit_small_patch14_dinov2.lvd142m); "
                "for weights in a local file set weights: <file>"
            )
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models("vit_*"), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"timm has no model named {arch!r}{hint}")
        if tag is not None:
            tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
            if tag not in tags:
                raise WeightsError(
                    f"timm model {arch!r} has no pretrained tag {tag!r} (known tags: {', '.join(tags) or 'none'})"
                )

    @property
    def resolved_weights(self) -> ResolvedWeights:
        if self._resolved is None:
            self._resolved = resolve_weights(self.options.weights, self.options.base_dir)
        return self._resolved

    @property
    def head_path(self) -> Path | None:
        if self.random_head:
            return None
        if self._head_path is None:
            spec = self.options.head
            if spec.lower() == "pretrained":
                raise WeightsError(
                    "dino_vit does not download linear heads: download the head of your model from the project "
                    "(e.g. https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_linear4_head.pth or "
                    "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_linearweights.pth) "
                    "and set head: <path to the file>"
                )
            path = Path(spec).expanduser()
            if not path.is_absolute():
                path = (Path(self.options.base_dir) if self.options.base_dir is not None else Path.cwd()) / path
            path = path.resolve()
            if not path.is_file():
                where = " (relative paths are taken from the config file's folder)" if self.options.base_dir else ""
                raise WeightsError(
                    f"linear head file not found: {path}{where}; a DINO backbone has no classifier of its own, so "
                    "head must name the project's published linear head (or random, for pipeline checks only)"
                )
            self._head_path = path
        return self._head_path

    def _head(self):
        if self._head_tensors is None and not self.random_head:
            self._head_tensors = read_linear_head(self.head_path, self.options.head_key)
        return self._head_tensors

    # ------------------------------------------------------------------ model structure

    def _create_kwargs(self) -> dict[str, Any]:
        return {"num_classes": 0}

    def _meta(self):
        """The architecture without weights (meta device): embed dim, patch size, prefix tokens."""
        if self._meta_model is None:
            self._check_model_name()
            arch, _ = self._arch_and_tag()
            self._meta_model = self._create_meta(arch, **self._create_kwargs())
            self._check_structure(self._meta_model)
        return self._meta_model

    @staticmethod
    def _create_skip_init(arch: str, **kwargs: Any):
        """The architecture with timm's (slow) initialisation skipped, global RNG untouched."""
        import timm
        import torch

        with torch.random.fork_rng(devices=[]):
            try:
                return timm.create_model(arch, pretrained=False, weight_init="skip", **kwargs)
            except TypeError:
                return timm.create_model(arch, pretrained=False, **kwargs)

    def _create_meta(self, arch: str, **kwargs: Any):
        import torch

        with torch.device("meta"):
            return self._create_skip_init(arch, **kwargs)

    def _check_structure(self, model) -> None:
        from timm.models.vision_transformer import VisionTransformer

        name = self.options.model
        problems = []
        if not isinstance(model, VisionTransformer):
            problems.append(f"it is a {type(model).__name__}, not a timm VisionTransformer")
        else:
            if getattr(model, "cls_token", None) is None:
                problems.append("it has no class token")
            if getattr(model, "pos_embed", None) is None:
                problems.append("it has no absolute position embedding")
            if getattr(model, "dynamic_img_pad", False):
                problems.append("it pads images dynamically")
        if problems:
            raise ConfigError(
                f"dino_vit needs a ViT with a class token and learned position embeddings (DINO, DINOv2); "
                f"model {name!r} does not fit: {'; '.join(problems)}"
            )

    def _family_from_name(self) -> str | None:
        arch, tag = self._arch_and_tag()
        if "dinov2" in arch:
            return "dinov2"
        if tag is not None and tag.split("_")[0] == "dino":
            return "dino"
        return None

    def layout(self) -> Layout:
        return LAYOUTS[self._resolve_layout()[0]]

    def _resolve_layout(self) -> tuple[str, str]:
        """``(layout name, how it was chosen)``; errors say what to set when it is ambiguous."""
        if self._layout is not None:
            return self._layout
        o = self.options
        meta = self._meta()
        dim = int(meta.embed_dim)
        head = self._head()
        in_features = None if head is None else int(head[0].shape[1])
        choices = ", ".join(LAYOUTS)
        if o.layout is not None:
            name, how = o.layout, "option"
        elif (from_key := _layout_from_head_key(o.head_key)) is not None:
            name, how = from_key, "head_key"
        else:
            family = self._family_from_name()
            arch, _ = self._arch_and_tag()
            if family == "dinov2":
                if in_features is None:
                    name, how = "dinov2_linear4", "default (DINOv2 hub: layers=4)"
                else:
                    fits = [n for n, lay in LAYOUTS.items() if lay.family == "dinov2" and lay.multiple * dim == in_features]
                    if not fits:
                        raise HeadError(
                            f"the head in {self.head_path} takes {in_features} features, but {o.model!r} (embed dim "
                            f"{dim}) gives {2 * dim} (dinov2_linear) or {5 * dim} (dinov2_linear4); is it the head of "
                            "another model size?"
                        )
                    name, how = fits[0], "head shape"
            elif family == "dino":
                size = _size_of(arch)
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
                f"the head in {self.head_path} takes {in_features} features, but layout {name} on {o.model!r} "
                f"(embed dim {dim}) gives {layout.multiple} × {dim} = {layout.multiple * dim}{hint}"
            )
        self._layout = (name, how)
        return self._layout

    def pos_embed_mode(self) -> str:
        """``"size"`` for DINOv2 with registers, ``"offset"`` otherwise (see the module doc)."""
        return "size" if int(getattr(self._meta(), "num_reg_tokens", 0) or 0) > 0 else "offset"

    # ------------------------------------------------------------------ loading

    def _check_pretrained_is_dino(self, name: str) -> None:
        import timm

        cfg = timm.models.get_pretrained_cfg(name)
        tag = getattr(cfg, "tag", None) or name.partition(".")[2]
        family = LAYOUTS[self._resolve_layout()[0]].family
        ok = ("dinov2" in name.partition(".")[0]) if family == "dinov2" else tag.split("_")[0] == "dino"
        if cfg is None or not cfg.has_weights or not ok:
            arch = name.partition(".")[0]
            dino = [n for n in timm.list_pretrained(f"{arch}.*") if "dino" in n]
            hint = f"use {' or '.join(dino)}" if dino else "use a local weights file"
            raise WeightsError(
                f"the pretrained weights timm gives for {name!r} are not {family.upper()}'s; {hint}, "
                "or set weights: <local file>"
            )

    @staticmethod
    def _grid_of(state_dict, meta, prefix_with_pos: int | None = None) -> int | None:
        """Native grid side implied by a state dict's position embedding."""
        pos = state_dict.get("pos_embed")
        if pos is None or pos.ndim != 3:
            return None
        prefix = prefix_with_pos
        if prefix is None:
            prefix = 0 if getattr(meta, "no_embed_class", False) else int(meta.num_prefix_tokens)
        n = int(pos.shape[1]) - prefix
        side = math.isqrt(max(n, 0))
        return side if side * side == n else None

    def load(self, device: str = "cpu") -> None:
        import timm
        import torch

        self._check_model_name()
        self._resolve_layout()
        arch, _tag = self._arch_and_tag()
        w = self.resolved_weights
        kwargs = self._create_kwargs()
        if w.kind in ("pretrained", "tag"):
            name = self._pretrained_name()
            self._check_pretrained_is_dino(name)
            try:
                model = timm.create_model(name, pretrained=True, **kwargs)
            except Exception as exc:
                raise WeightsError(
                    f"the pretrained weights of timm model {name!r} could not be fetched or loaded "
                    f"({exception_summary(exc)}); without network access, download them elsewhere and "
                    "set weights: <local file>, or set weights: random for a smoke test (never a silent fallback)"
                ) from exc
        elif w.kind == "file":
            sd = load_state_dict(w.path)
            meta = self._meta()
            original = "mask_token" in sd or "register_tokens" in sd  # Meta's dinov2_vit*14*_pretrain.pth
            side = self._grid_of(sd, meta, prefix_with_pos=1 if original else None)
            if side is not None and (side, side) != tuple(meta.patch_embed.grid_size):
                # build at the file's grid so that its position embedding is used untouched
                kwargs["img_size"] = side * int(meta.patch_embed.patch_size[0])
                meta = self._create_meta(arch, **kwargs)
            if original:  # timm's own conversion of the original DINOv2 layout
                from timm.models.vision_transformer import checkpoint_filter_fn

                if "mask_token" not in sd:
                    sd = {**sd, "mask_token": torch.zeros(1)}
                sd = checkpoint_filter_fn(dict(sd), meta)
            model = self._create_skip_init(arch, **kwargs)  # every parameter comes from the file
            load_into(model, sd, what=f"timm model {arch!r} from {w.path}")
        else:  # random, explicitly asked for
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.options.seed)
                model = timm.create_model(arch, pretrained=False, **kwargs)
        self._check_structure(model)
        model.eval().to(device)
        self.model = model
        self.device = device
        self.weights_digest = file_digest(w.path) if w.kind == "file" else state_dict_digest(model)
        self.linear = self._build_linear().eval().to(device)

    def _build_linear(self):
        import torch
        from torch import nn

        dim = int(self.model.embed_dim) * self.layout().multiple
        if self.random_head:
            with torch.random.fork_rng(devices=[]):
                linear = nn.Linear(dim, self.options.num_classes)
            g = torch.Generator().manual_seed(self.options.seed + 1)
            with torch.no_grad():  # DINO's LinearClassifier init: N(0, 0.01), zero bias
                linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 0.01)
                linear.bias.zero_()
            return linear
        weight, bias, _ = self._head()
        with torch.random.fork_rng(devices=[]):
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None).to(weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        return linear

    def _require_model(self):
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}: call load(device) before using the model")
        return self.model

    # ------------------------------------------------------------------ preprocessing

    def resize_size(self) -> int:
        return int(self.options.img_size * 256 / 224)

    def preprocessing(self) -> dict[str, Any]:
        return {
            "resize": self.resize_size(),
            "interpolation": "bicubic",
            "crop": self.options.img_size,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        }

    def transform(self) -> Callable[[Any], Any]:
        return resize_crop_transform(self.resize_size(), self.options.img_size, IMAGENET_MEAN, IMAGENET_STD, "bicubic")

    # ------------------------------------------------------------------ forward

    def block_outputs(self, images, n: int):
        """Outputs of the last ``n`` blocks (before the final norm), tokens ``[cls, registers…, patches…]``."""
        import torch

        model = self._require_model()
        x = images.to(self.device)
        t = model.patch_embed.proj(x)
        grid = (int(t.shape[-2]), int(t.shape[-1]))
        t = t.flatten(2).transpose(1, 2)
        t = model.patch_embed.norm(t)
        pos = model.pos_embed
        n_pos_prefix = 0 if model.no_embed_class else int(model.num_prefix_tokens)
        native = tuple(int(g) for g in model.patch_embed.grid_size)
        patch_pos = interpolate_patch_pos_embed(
            pos[:, n_pos_prefix:], native, grid, (int(x.shape[-2]), int(x.shape[-1])), self.pos_embed_mode()
        )
        prefix = [model.cls_token.expand(t.shape[0], -1, -1)]
        if model.reg_token is not None:
            prefix.append(model.reg_token.expand(t.shape[0], -1, -1))
        if model.no_embed_class:
            t = torch.cat(prefix + [t + patch_pos], dim=1)
        else:
            t = torch.cat(prefix + [t], dim=1) + torch.cat([pos[:, :n_pos_prefix], patch_pos], dim=1)
        t = model.norm_pre(model.patch_drop(model.pos_drop(t)))
        depth = len(model.blocks)
        if n > depth:
            raise ConfigError(f"layout needs the last {n} blocks but {self.options.model!r} has {depth}")
        outs = []
        for i, blk in enumerate(model.blocks):
            t = blk(t)
            if i >= depth - n:
                outs.append(t)
        return outs

    def features(self, images):
        import torch

        model = self._require_model()
        layout = self.layout()
        with torch.no_grad():
            normed = [model.norm(o) for o in self.block_outputs(images, layout.n_blocks)]
            parts = [o[:, 0] for o in normed]
            if not layout.avgpool:
                return torch.cat(parts, dim=-1)
            patches = normed[-1][:, int(model.num_prefix_tokens):]
            avg = patches.mean(dim=1)
            if layout.interleave:  # DINO: cat((cls.unsqueeze(-1), avg.unsqueeze(-1)), -1).reshape(B, -1)
                return torch.stack([parts[-1], avg], dim=-1).reshape(avg.shape[0], -1)
            return torch.cat(parts + [avg], dim=-1)

    def logits(self, images):
        import torch

        self._require_model()
        with torch.no_grad():
            f = self.features(images)
            return self.linear(f.to(self.linear.weight.dtype))

    # ------------------------------------------------------------------ head

    def head(self) -> LinearHead:
        import torch

        self._require_model()
        weight = self.linear.weight.detach()
        bias = self.linear.bias.detach() if self.linear.bias is not None else None
        eps = float(torch.finfo(weight.dtype).eps)
        w64 = weight.to("cpu", torch.float64).numpy().copy()
        b64 = None if bias is None else bias.to("cpu", torch.float64).numpy().copy()
        info = imagenet_class_info(w64.shape[0])
        keys, names = (list(info[0]), list(info[1])) if info is not None else (None, None)
        return LinearHead(weight=w64, bias=b64, weight_eps=eps, class_names=names, class_keys=keys)

    # ------------------------------------------------------------------ provenance

    def describe(self) -> dict[str, Any]:
        import timm

        w = self.resolved_weights
        name, how = self._resolve_layout()
        layout = LAYOUTS[name]
        if self.random_head:
            head: dict[str, Any] = {"random": True, "num_classes": self.options.num_classes, "seed": self.options.seed + 1}
        else:
            if self._head_digest is None:
                self._head_digest = file_digest(self.head_path)
            head = {
                "path": str(self.head_path),
                "digest": self._head_digest,
                "key": self._head()[2],
                "shape": list(self._head()[0].shape),
            }
        mode = self.pos_embed_mode()
        out: dict[str, Any] = {
            "plugin": self.plugin_name,
            "model": self.options.model,
            "layout": name,
            "layout_source": how,
            "layout_summary": layout.summary,
            "weights": w.as_dict(),
            "weights_digest": self.weights_digest if self.weights_digest else (
                file_digest(w.path) if w.kind == "file" else None
            ),
            "random_weights": self.random_backbone or self.random_head,
            "random_backbone": self.random_backbone,
            "head": head,
            "img_size": self.options.img_size,
            "preprocessing": self.preprocessing(),
            "pos_embed_interpolation": (
                "bicubic, scale factor (n+0.1)/N, no antialias" if mode == "offset" else "bicubic to size, antialias"
            ),
            "timm_version": timm.__version__,
        }
        if self.random_backbone:
            out["seed"] = self.options.seed
        return out


@hookimpl
def register_backbones(register):
    register("dino_vit", DinoViTBackbone)
