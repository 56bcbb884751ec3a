"""Which backbone checkpoints the names users write in ``expect_backbone`` denote, for the
translators the SING authors published (:data:`~sing_audit.builtins.sing_reference_folder.PUBLISHED_BACKBONES`).

A name is accepted exactly when it loads the published weights (see :func:`backbone_mismatch`);
what a name without a tag loads comes from timm's and torchvision's registries, copied into
:data:`TIMM_DEFAULT_TAGS` and :data:`TORCHVISION_DEFAULT_WEIGHTS` (tests/test_backbone_ids.py
checks them against the installed libraries), so the translator needs neither library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .sing_reference_folder import PUBLISHED_BACKBONES, normalise_name

__all__ = [
    "TIMM_DEFAULT_TAGS",
    "TIMM_TORCHVISION_V1_TAG",
    "TORCHVISION_DEFAULT_WEIGHTS",
    "BackboneId",
    "backbone_mismatch",
    "parse_backbone_id",
    "published_backbone",
]

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
