"""The folders of the translators published with the SING authors' code: their
``metadata.yaml``, the backbones and target spaces the authors name, and ``best.pt``
read without unpickling anything but tensors (see :mod:`sing_audit.builtins.sing_reference`)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from sing_audit.errors import WeightsError

__all__ = [
    "KARLO_TARGET",
    "PUBLISHED_BACKBONES",
    "TIMM_DEFAULT_TAGS",
    "TORCHVISION_DEFAULT_WEIGHTS",
    "BackboneId",
    "backbone_mismatch",
    "parse_backbone_id",
    "published_backbone",
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

#: what a name without a tag loads, per library, for the published architectures (checked
#: against the installed timm's and torchvision's registries by tests/test_backbone_ids.py):
#: timm's default pretrained tag (``timm.models.get_pretrained_cfg(arch).tag``, timm 1.0.31) ...
TIMM_DEFAULT_TAGS: dict[str, str] = {
    "vit_large_patch16_224": "augreg_in21k_ft_in1k",
    "resnetv2_50x1_bit": "goog_distilled_in1k",
    "resnext101_32x8d": "tv_in1k",
    "tf_efficientnet_b0": "ns_jft_in1k",
    "swin_large_patch4_window7_224": "ms_in22k_ft_in1k",
    "deit3_large_patch16_224": "fb_in1k",
    "eva02_large_patch14_448": "mim_in22k_ft_in22k_in1k",
    "convnext_base": "fb_in22k_ft_in1k",
    "resnet50": "a1_in1k",
    "densenet121": "ra_in1k",
    "vgg16": "tv_in1k",
    "vgg19": "tv_in1k",
}
#: ... and torchvision's ``DEFAULT`` weights (``torchvision.models.get_model_weights(arch).DEFAULT``, 0.29)
TORCHVISION_DEFAULT_WEIGHTS: dict[str, str] = {
    "resnet50": "IMAGENET1K_V2",
    "densenet121": "IMAGENET1K_V1",
    "vgg16": "IMAGENET1K_V1",
    "vgg19": "IMAGENET1K_V1",
    "convnext_base": "IMAGENET1K_V1",
    "resnext101_32x8d": "IMAGENET1K_V2",
}
#: timm's tag for torchvision's IMAGENET1K_V1 weights (timm republishes them as ``<arch>.tv_in1k``)
TIMM_TORCHVISION_V1_TAG = "tv_in1k"


@dataclass(frozen=True)
class BackboneId:
    """A backbone checkpoint as a user writes it, parsed: ``library`` is ``"timm"``,
    ``"torchvision"``, ``"transformers"`` or ``None`` (not said); ``arch`` is the architecture
    (a hub id for transformers), lower case; ``tag`` is timm's tag or torchvision's weights
    name (upper case), ``None`` when not written."""

    library: str | None
    arch: str
    tag: str | None

    def written(self) -> str:
        if self.library == "torchvision":
            return f"torchvision:{self.arch}" + (f".{self.tag}" if self.tag else "")
        prefix = "timm/" if self.library == "timm" else ""
        return prefix + self.arch + (f".{self.tag}" if self.tag else "")


_TV_ENUM = re.compile(r"^([a-z0-9_]+)_weights\.([a-z0-9_]+)$")
_TV_PAREN = re.compile(r"^([a-z0-9_]+)\s*\(\s*([a-z0-9_]+)\s*\)$")


def parse_backbone_id(text: str, library: str | None = None) -> BackboneId:
    """Parse the forms users write: ``arch``, ``arch.tag``, ``timm/arch.tag``, ``timm:arch``,
    ``hf-hub:timm/arch.tag``, ``hf-hub:org/name`` or ``org/name`` (transformers),
    ``torchvision:resnet50``, ``resnet50.IMAGENET1K_V1``, ``ResNet50_Weights.IMAGENET1K_V1``
    and ``resnet50 (IMAGENET1K_V1)``. ``library`` is the library when the text does not say."""
    n = text.strip().lower()
    for prefixes, lib in (
        (("hf-hub:timm/", "hf_hub:timm/", "hf:timm/", "timm:", "timm/"), "timm"),
        (("torchvision:", "torchvision/", "torchvision.models.", "torchvision."), "torchvision"),
        (("hf-hub:", "hf_hub:", "hf:", "transformers:"), "transformers"),
    ):
        for p in prefixes:
            if n.startswith(p):
                n, library = n[len(p):], lib
                break
        else:
            continue
        break
    if library == "transformers" or (library is None and "/" in n):
        return BackboneId("transformers", n, None)
    m = _TV_ENUM.match(n) or _TV_PAREN.match(n)
    if m:
        return BackboneId("torchvision", m.group(1), m.group(2).upper())
    for sep in (".", ":"):
        arch, found, tag = n.partition(sep)
        if found:
            break
    if not found:
        return BackboneId(library, n, None)
    if library is None and re.fullmatch(r"imagenet1k_\w+|default", tag):
        library = "torchvision"  # torchvision's weights names: IMAGENET1K_V1, DEFAULT
    return BackboneId(library, arch, tag.upper() if library == "torchvision" else tag)


def published_backbone(model_name: str) -> BackboneId | None:
    """The checkpoint the authors' translator for ``model_name`` was fitted on, parsed."""
    pub = PUBLISHED_BACKBONES.get(model_name.lower())
    return None if pub is None else parse_backbone_id(pub[1], pub[0])


def _resolve_tag(given: BackboneId, want: BackboneId) -> tuple[str | None, str]:
    """``(timm tag or torchvision weights the name loads, how)`` for ``given`` read in the
    library of the published ``want`` when it names none."""
    library = given.library or want.library
    if library == "timm":
        if given.tag is not None:
            return given.tag, "as written"
        return TIMM_DEFAULT_TAGS.get(given.arch), "timm's default pretrained tag"
    if given.tag is None or given.tag == "DEFAULT":
        return TORCHVISION_DEFAULT_WEIGHTS.get(given.arch), "torchvision's DEFAULT weights"
    return given.tag, "as written"


def backbone_mismatch(model_name: str, expected: str) -> str | None:
    """Why the checkpoint ``expected`` (as a user writes it in ``expect_backbone``) is not the one
    the authors' translator for ``model_name`` was fitted on, or ``None`` when it is.

    A name is accepted exactly when it loads the published weights: the authors' model name;
    the checkpoint with any of the prefixes users write (``timm/``, ``hf-hub:timm/``,
    ``torchvision:``); a name without a tag when it resolves to the published weights —
    timm's default pretrained tag for a timm checkpoint (``vit_large_patch16_224`` is
    ``augreg_in21k_ft_in1k``; ``resnetv2_50x1_bit`` is not ``goog_in21k_ft_in1k``), and for a
    torchvision checkpoint torchvision's ``DEFAULT`` (``densenet121`` is IMAGENET1K_V1;
    ``resnet50`` is IMAGENET1K_V2, not the published V1) — and, when named as a timm model,
    timm's default tag too (``timm/densenet121`` is ``ra_in1k``); timm's ``tv_in1k`` tag is
    torchvision's IMAGENET1K_V1 republished, so ``resnet50.tv_in1k`` is accepted.
    """
    if normalise_name(expected) == normalise_name(model_name):
        return None
    want = published_backbone(model_name)
    if want is None:
        return f"the translator names backbone {model_name!r}, which is not one the authors published"
    given = parse_backbone_id(expected)
    published = want.written()
    write = f"write expect_backbone: {published}" + (f" (or {model_name})" if model_name else "")
    if want.library == "transformers":
        if given.library in (None, "transformers") and given.arch == want.arch:
            return None
        return f"{expected!r} is not the hub model {want.arch!r}; {write}"
    if given.arch != want.arch:
        return f"{expected!r} is another architecture than {want.arch!r}; {write}"
    library = given.library or want.library
    tag, how = _resolve_tag(given, want)
    if want.library == "timm":
        if library != "timm":
            return (f"{expected!r} names torchvision's own {given.arch} weights ({tag or 'none known'}), "
                    f"not timm's {published}; {write}")
        if tag == want.tag:
            return None
        if given.tag is None:
            return f"a bare {given.arch!r} loads {how} {tag!r}, not the published {want.tag!r}; {write}"
        return f"{given.arch}.{tag} is other weights than the published {given.arch}.{want.tag}; {write}"
    # published by torchvision (want.tag is its weights name)
    timm_tag = f"timm/{want.arch}.{TIMM_TORCHVISION_V1_TAG}" if want.tag == "IMAGENET1K_V1" else None
    also = f", or {timm_tag} (the same weights in timm)" if timm_tag else ""
    if library == "timm" or (given.tag is not None and given.tag.lower() == given.tag and given.library is None):
        # a timm name (timm/ prefix, or a lower-case timm tag such as tv_in1k)
        t_tag = given.tag if given.tag is not None else TIMM_DEFAULT_TAGS.get(given.arch)
        if want.tag == "IMAGENET1K_V1" and t_tag == TIMM_TORCHVISION_V1_TAG:
            return None
        how = "as written" if given.tag is not None else "timm's default pretrained tag"
        return (f"timm's {given.arch}.{t_tag} ({how}) is not torchvision's {want.tag} weights the translator was "
                f"fitted on; {write}{also}")
    if tag == want.tag:
        return None
    if given.tag is None or given.tag == "DEFAULT":
        return f"{expected!r} loads {how} ({tag}), not the published {want.tag}; {write}{also}"
    return f"{given.arch} {given.tag} is other weights than the published {want.tag}; {write}{also}"


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


#: what a name without a tag loads, per library, for the published architectures (checked
#: against the installed timm's and torchvision's registries by tests/test_backbone_ids.py):
#: timm's default pretrained tag (``timm.models.get_pretrained_cfg(arch).tag``, timm 1.0.31) ...
TIMM_DEFAULT_TAGS: dict[str, str] = {
    "vit_large_patch16_224": "augreg_in21k_ft_in1k",
    "resnetv2_50x1_bit": "goog_distilled_in1k",
    "resnext101_32x8d": "tv_in1k",
    "tf_efficientnet_b0": "ns_jft_in1k",
    "swin_large_patch4_window7_224": "ms_in22k_ft_in1k",
    "deit3_large_patch16_224": "fb_in1k",
    "eva02_large_patch14_448": "mim_in22k_ft_in22k_in1k",
    "convnext_base": "fb_in22k_ft_in1k",
    "resnet50": "a1_in1k",
    "densenet121": "ra_in1k",
    "vgg16": "tv_in1k",
    "vgg19": "tv_in1k",
}
#: ... and torchvision's ``DEFAULT`` weights (``torchvision.models.get_model_weights(arch).DEFAULT``, 0.29)
TORCHVISION_DEFAULT_WEIGHTS: dict[str, str] = {
    "resnet50": "IMAGENET1K_V2",
    "densenet121": "IMAGENET1K_V1",
    "vgg16": "IMAGENET1K_V1",
    "vgg19": "IMAGENET1K_V1",
    "convnext_base": "IMAGENET1K_V1",
    "resnext101_32x8d": "IMAGENET1K_V2",
}
#: timm's tag for torchvision's IMAGENET1K_V1 weights (timm republishes them as ``<arch>.tv_in1k``)
TIMM_TORCHVISION_V1_TAG = "tv_in1k"


@dataclass(frozen=True)
class BackboneId:
    """A backbone checkpoint as a user writes it, parsed: ``library`` is ``"timm"``,
    ``"torchvision"``, ``"transformers"`` or ``None`` (not said); ``arch`` is the architecture
    (a hub id for transformers), lower case; ``tag`` is timm's tag or torchvision's weights
    name (upper case), ``None`` when not written."""

    library: str | None
    arch: str
    tag: str | None

    def written(self) -> str:
        if self.library == "torchvision":
            return f"torchvision:{self.arch}" + (f".{self.tag}" if self.tag else "")
        prefix = "timm/" if self.library == "timm" else ""
        return prefix + self.arch + (f".{self.tag}" if self.tag else "")


_TV_ENUM = re.compile(r"^([a-z0-9_]+)_weights\.([a-z0-9_]+)$")
_TV_PAREN = re.compile(r"^([a-z0-9_]+)\s*\(\s*([a-z0-9_]+)\s*\)$")


def parse_backbone_id(text: str, library: str | None = None) -> BackboneId:
    """Parse the forms users write: ``arch``, ``arch.tag``, ``timm/arch.tag``, ``timm:arch``,
    ``hf-hub:timm/arch.tag``, ``hf-hub:org/name`` or ``org/name`` (transformers),
    ``torchvision:resnet50``, ``resnet50.IMAGENET1K_V1``, ``ResNet50_Weights.IMAGENET1K_V1``
    and ``resnet50 (IMAGENET1K_V1)``. ``library`` is the library when the text does not say."""
    n = text.strip().lower()
    for prefixes, lib in (
        (("hf-hub:timm/", "hf_hub:timm/", "hf:timm/", "timm:", "timm/"), "timm"),
        (("torchvision:", "torchvision/", "torchvision.models.", "torchvision."), "torchvision"),
        (("hf-hub:", "hf_hub:", "hf:", "transformers:"), "transformers"),
    ):
        for p in prefixes:
            if n.startswith(p):
                n, library = n[len(p):], lib
                break
        else:
            continue
        break
    if library == "transformers" or (library is None and "/" in n):
        return BackboneId("transformers", n, None)
    m = _TV_ENUM.match(n) or _TV_PAREN.match(n)
    if m:
        return BackboneId("torchvision", m.group(1), m.group(2).upper())
    for sep in (".", ":"):
        arch, found, tag = n.partition(sep)
        if found:
            break
    if not found:
        return BackboneId(library, n, None)
    if library is None and re.fullmatch(r"imagenet1k_\w+|default", tag):
        library = "torchvision"  # torchvision's weights names: IMAGENET1K_V1, DEFAULT
    return BackboneId(library, arch, tag.upper() if library == "torchvision" else tag)


def published_backbone(model_name: str) -> BackboneId | None:
    """The checkpoint the authors' translator for ``model_name`` was fitted on, parsed."""
    pub = PUBLISHED_BACKBONES.get(model_name.lower())
    return None if pub is None else parse_backbone_id(pub[1], pub[0])


def _resolve_tag(given: BackboneId, want: BackboneId) -> tuple[str | None, str]:
    """``(timm tag or torchvision weights the name loads, how)`` for ``given`` read in the
    library of the published ``want`` when it names none."""
    library = given.library or want.library
    if library == "timm":
        if given.tag is not None:
            return given.tag, "as written"
        return TIMM_DEFAULT_TAGS.get(given.arch), "timm's default pretrained tag"
    if given.tag is None or given.tag == "DEFAULT":
        return TORCHVISION_DEFAULT_WEIGHTS.get(given.arch), "torchvision's DEFAULT weights"
    return given.tag, "as written"


def backbone_mismatch(model_name: str, expected: str) -> str | None:
    """Why the checkpoint ``expected`` (as a user writes it in ``expect_backbone``) is not the one
    the authors' translator for ``model_name`` was fitted on, or ``None`` when it is.

    A name is accepted exactly when it loads the published weights: the authors' model name;
    the checkpoint with any of the prefixes users write (``timm/``, ``hf-hub:timm/``,
    ``torchvision:``); a name without a tag when it resolves to the published weights —
    timm's default pretrained tag for a timm checkpoint (``vit_large_patch16_224`` is
    ``augreg_in21k_ft_in1k``; ``resnetv2_50x1_bit`` is not ``goog_in21k_ft_in1k``), and for a
    torchvision checkpoint torchvision's ``DEFAULT`` (``densenet121`` is IMAGENET1K_V1;
    ``resnet50`` is IMAGENET1K_V2, not the published V1) — and, when named as a timm model,
    timm's default tag too (``timm/densenet121`` is ``ra_in1k``); timm's ``tv_in1k`` tag is
    torchvision's IMAGENET1K_V1 republished, so ``resnet50.tv_in1k`` is accepted.
    """
    if normalise_name(expected) == normalise_name(model_name):
        return None
    want = published_backbone(model_name)
    if want is None:
        return f"the translator names backbone {model_name!r}, which is not one the authors published"
    given = parse_backbone_id(expected)
    published = want.written()
    write = f"write expect_backbone: {published}" + (f" (or {model_name})" if model_name else "")
    if want.library == "transformers":
        if given.library in (None, "transformers") and given.arch == want.arch:
            return None
        return f"{expected!r} is not the hub model {want.arch!r}; {write}"
    if given.arch != want.arch:
        return f"{expected!r} is another architecture than {want.arch!r}; {write}"
    library = given.library or want.library
    tag, how = _resolve_tag(given, want)
    if want.library == "timm":
        if library != "timm":
            return (f"{expected!r} names torchvision's own {given.arch} weights ({tag or 'none known'}), "
                    f"not timm's {published}; {write}")
        if tag == want.tag:
            return None
        if given.tag is None:
            return f"a bare {given.arch!r} loads {how} {tag!r}, not the published {want.tag!r}; {write}"
        return f"{given.arch}.{tag} is other weights than the published {given.arch}.{want.tag}; {write}"
    # published by torchvision (want.tag is its weights name)
    timm_tag = f"timm/{want.arch}.{TIMM_TORCHVISION_V1_TAG}" if want.tag == "IMAGENET1K_V1" else None
    also = f", or {timm_tag} (the same weights in timm)" if timm_tag else ""
    if library == "timm" or (given.tag is not None and given.tag.lower() == given.tag and given.library is None):
        # a timm name (timm/ prefix, or a lower-case timm tag such as tv_in1k)
        t_tag = given.tag if given.tag is not None else TIMM_DEFAULT_TAGS.get(given.arch)
        if want.tag == "IMAGENET1K_V1" and t_tag == TIMM_TORCHVISION_V1_TAG:
            return None
        how = "as written" if given.tag is not None else "timm's default pretrained tag"
        return (f"timm's {given.arch}.{t_tag} ({how}) is not torchvision's {want.tag} weights the translator was "
                f"fitted on; {write}{also}")
    if tag == want.tag:
        return None
    if given.tag is None or given.tag == "DEFAULT":
        return f"{expected!r} loads {how} ({tag}), not the published {want.tag}; {write}{also}"
    return f"{given.arch} {given.tag} is other weights than the published {want.tag}; {write}{also}"


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


def normalise_backbone_name(name: str) -> str:
    n = name.strip().lower()
    stripped = True
    while stripped:
        stripped = False
        for p in _PREFIXES:
            if n.startswith(p):
                n, stripped = n[len(p) :], True
    return normalise_name(n)


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
