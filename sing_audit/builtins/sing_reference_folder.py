"""The folders of the translators published with the SING authors' code: their
``metadata.yaml``, the backbones and target spaces the authors name, and ``best.pt``
read without unpickling anything but tensors (see :mod:`sing_audit.builtins.sing_reference`)."""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePath
from typing import Any

from sing_audit.errors import WeightsError

__all__ = [
    "KARLO_TARGET",
    "PUBLISHED_BACKBONES",
    "normalise_name",
    "read_checkpoint",
    "read_metadata",
    "target_names",
]

log = logging.getLogger(__name__)


#: the target space of every translator the authors published
KARLO_TARGET = "kakao_karlo_v1_alpha_image_variations"

#: names under which a user may declare the Karlo target space (compared after :func:`normalise_name`)
_TARGET_ALIASES: dict[str, tuple[str, ...]] = {
    KARLO_TARGET: (
        KARLO_TARGET,
        "karlo",
        "kakaobrain/karlo-v1-alpha-image-variations",
        "kakaobrain/karlo-v1-alpha",
        "openai/clip-vit-large-patch14",
        "clip-vit-large-patch14",
        "ViT-L-14/openai",
        "ViT-L-14:openai",
        "open_clip:ViT-L-14:openai",
        "ViT-L/14 openai",
    ),
}

#: the authors' ``model_name`` -> (library, checkpoint, feature dimension), from their
#: ``configs/models.yaml`` (where timm names carry no tag, the tag timm resolved them to).
PUBLISHED_BACKBONES: dict[str, tuple[str, str, int]] = {
    "resnet": ("torchvision", "resnet50 (IMAGENET1K_V1)", 2048),
    "dinovit1": ("timm", "vit_large_patch16_224.augreg_in21k_ft_in1k", 1024),
    "bitresnet": ("timm", "resnetv2_50x1_bit.goog_in21k_ft_in1k", 2048),
    "resnext": ("timm", "resnext101_32x8d.fb_wsl_ig1b_ft_in1k", 2048),
    "efficientnet": ("timm", "tf_efficientnet_b0.ns_jft_in1k", 1280),
    "dinov2": ("transformers", "facebook/dinov2-large-imagenet1k-1-layer", 2048),
    "swin_large": ("timm", "swin_large_patch4_window7_224.ms_in22k_ft_in1k", 1536),
    "deit": ("timm", "deit3_large_patch16_224.fb_in1k", 1024),
    "densenet": ("torchvision", "densenet121 (IMAGENET1K_V1)", 1024),
    "eva02_large": ("timm", "eva02_large_patch14_448.mim_in22k_ft_in22k_in1k", 1024),
    "convnext": ("timm", "convnext_base.fb_in22k_ft_in1k", 1024),
    "vgg16": ("torchvision", "vgg16 (IMAGENET1K_V1)", 4096),
    "vgg19": ("torchvision", "vgg19 (IMAGENET1K_V1)", 4096),
}

_ARCHITECTURES = ("linear", "3layer", "4layer", "residual")
_REQUIRED = (
    "model_name",
    "translator_name",
    "architecture",
    "embedding_backend",
    "in_dim",
    "out_dim",
    "checkpoint_file",
)
_OPTIONAL = ("hidden_dim",)
_NESTED = "translator_state_dict"


def normalise_name(name: str) -> str:
    """Compare names ignoring case and punctuation."""
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def target_names(backend: str) -> set[str]:
    """Every normalised name that denotes the target space ``backend``."""
    names = {normalise_name(backend)}
    for key, aliases in _TARGET_ALIASES.items():
        if normalise_name(key) == normalise_name(backend):
            names |= {normalise_name(a) for a in aliases}
    return names


def read_metadata(path: Path) -> dict[str, Any]:
    """Read and check ``metadata.yaml``; raise :class:`WeightsError` saying what is wrong."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise WeightsError(
            f"no metadata.yaml in {path.parent}: a SING reference translator folder holds metadata.yaml and best.pt "
            "(translators/<model>/<name>/ in the authors' repository)"
        ) from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise WeightsError(
            f"cannot read {path}: {exc.__class__.__name__}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise WeightsError(
            f"{path} must be a mapping of metadata fields, got {type(data).__name__}"
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise WeightsError(
            f"{path} lacks the field(s) {', '.join(missing)}; the SING reference format needs {', '.join(_REQUIRED)}"
        )
    extra = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if extra:
        log.warning(
            "%s has fields the SING reference format does not define: %s (ignored)",
            path,
            ", ".join(map(str, extra)),
        )
    out: dict[str, Any] = {}
    for key in (
        "model_name",
        "translator_name",
        "architecture",
        "embedding_backend",
        "checkpoint_file",
    ):
        value = data[key]
        if not isinstance(value, str) or not value.strip():
            raise WeightsError(
                f"{path}: field {key!r} must be a non-empty string, got {value!r}"
            )
        out[key] = value.strip()
    out["architecture"] = out["architecture"].lower()
    if out["architecture"] not in _ARCHITECTURES:
        raise WeightsError(
            f"{path}: architecture {out['architecture']!r} is not one of {', '.join(_ARCHITECTURES)}"
        )
    for key in ("in_dim", "out_dim"):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise WeightsError(
                f"{path}: field {key!r} must be a positive integer, got {value!r}"
            )
        out[key] = value
    hidden = data.get("hidden_dim", out["in_dim"])
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0:
        raise WeightsError(
            f"{path}: field 'hidden_dim' must be a positive integer, got {hidden!r}"
        )
    out["hidden_dim"] = hidden
    ckpt = PurePath(out["checkpoint_file"])
    if ckpt.is_absolute() or ".." in ckpt.parts:
        raise WeightsError(
            f"{path}: checkpoint_file must be a path inside the translator folder, got {out['checkpoint_file']!r}"
        )
    return out


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state dict in ``path``, read without unpickling anything but tensors."""
    import torch

    from sing_audit import weights

    try:
        return weights.load_state_dict(path)
    except WeightsError as exc:
        # the authors' loader also accepts {"translator_state_dict": {...}}; read it again
        # weights-only, with the same refusal of code (the file may have changed meanwhile)
        if _NESTED not in str(exc):
            raise
        obj = weights.torch_load_weights_only(path)
        inner = obj.get(_NESTED) if isinstance(obj, dict) else None
        if (
            not isinstance(inner, dict)
            or not inner
            or not all(isinstance(v, torch.Tensor) for v in inner.values())
        ):
            raise
        sd = {str(k): v for k, v in inner.items()}
        if all(k.startswith("_orig_mod.") for k in sd):
            sd = {k[len("_orig_mod.") :]: v for k, v in sd.items()}
        return sd
