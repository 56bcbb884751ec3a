"""``expect_backbone`` of the SING reference translators: which names users write denote the
published checkpoint, table-driven over every published backbone, with the expected answer
for a name without a tag taken from the installed timm's and torchvision's own registries."""

from __future__ import annotations

import pytest

from sing_audit.builtins.sing_reference_folder import PUBLISHED_BACKBONES
from sing_audit.builtins.sing_reference_ids import (
    TIMM_DEFAULT_TAGS,
    TIMM_TORCHVISION_V1_TAG,
    TORCHVISION_DEFAULT_WEIGHTS,
    backbone_mismatch,
    parse_backbone_id,
    published_backbone,
)

timm = pytest.importorskip("timm")
tvm = pytest.importorskip("torchvision.models")

MODELS = sorted(PUBLISHED_BACKBONES)
TIMM_MODELS = [m for m in MODELS if PUBLISHED_BACKBONES[m][0] == "timm"]
TV_MODELS = [m for m in MODELS if PUBLISHED_BACKBONES[m][0] == "torchvision"]


def _timm_default_tag(arch: str) -> str:
    return timm.models.get_pretrained_cfg(arch).tag


def _tv_default(arch: str) -> str:
    return tvm.get_model_weights(arch).DEFAULT.name


# --------------------------------------------------------------------------- the tables are the registries'


@pytest.mark.parametrize("arch", sorted(TIMM_DEFAULT_TAGS))
def test_timm_default_tags_are_timms(arch):
    assert TIMM_DEFAULT_TAGS[arch] == _timm_default_tag(arch)


@pytest.mark.parametrize("arch", sorted(TORCHVISION_DEFAULT_WEIGHTS))
def test_torchvision_defaults_are_torchvisions(arch):
    assert TORCHVISION_DEFAULT_WEIGHTS[arch] == _tv_default(arch)


def test_every_published_architecture_is_in_the_tables():
    for model in MODELS:
        want = published_backbone(model)
        if want.library == "timm":
            assert want.arch in TIMM_DEFAULT_TAGS and timm.is_model(f"{want.arch}.{want.tag}")
        elif want.library == "torchvision":
            assert want.arch in TORCHVISION_DEFAULT_WEIGHTS and want.arch in TIMM_DEFAULT_TAGS
            assert want.tag in tvm.get_model_weights(want.arch).__members__
        else:
            assert want.library == "transformers" and "/" in want.arch


def test_timm_tv_in1k_is_torchvisions_v1():
    """timm's tv_in1k tag republishes torchvision's IMAGENET1K_V1 (where timm still names the URL, it is torchvision's)."""
    cfg = timm.models.get_pretrained_cfg(f"resnet50.{TIMM_TORCHVISION_V1_TAG}")
    assert cfg.url == tvm.ResNet50_Weights.IMAGENET1K_V1.url
    for model in TV_MODELS:
        assert timm.is_model(f"{published_backbone(model).arch}.{TIMM_TORCHVISION_V1_TAG}")


# --------------------------------------------------------------------------- accepted forms


def _accepted_forms(model: str) -> list[str]:
    want = published_backbone(model)
    lib, pub, _ = PUBLISHED_BACKBONES[model]
    forms = [model, model.upper(), pub]
    if want.library == "timm":
        full = f"{want.arch}.{want.tag}"
        forms += [full, f"timm/{full}", f"timm:{full}", f"hf-hub:timm/{full}", f"hf_hub:timm/{full}", full.upper()]
    elif want.library == "torchvision":
        enum = tvm.get_model_weights(want.arch).__name__
        forms += [f"{want.arch}.{want.tag}", f"torchvision:{want.arch}.{want.tag}", f"{enum}.{want.tag}",
                  f"{want.arch} ({want.tag})", f"{want.arch}:{want.tag}"]
        if want.tag == "IMAGENET1K_V1":
            forms += [f"{want.arch}.{TIMM_TORCHVISION_V1_TAG}", f"timm/{want.arch}.{TIMM_TORCHVISION_V1_TAG}",
                      f"hf-hub:timm/{want.arch}.{TIMM_TORCHVISION_V1_TAG}"]
    else:
        forms += [f"hf-hub:{want.arch}", f"hf:{want.arch}", f"transformers:{want.arch}"]
    return forms


@pytest.mark.parametrize("model", MODELS)
def test_the_published_checkpoint_under_every_written_form(model):
    for form in _accepted_forms(model):
        assert backbone_mismatch(model, form) is None, form


@pytest.mark.parametrize("model", TIMM_MODELS)
def test_a_bare_timm_name_is_accepted_exactly_when_timms_default_tag_is_the_published_one(model):
    want = published_backbone(model)
    default = _timm_default_tag(want.arch)
    for form in (want.arch, f"timm/{want.arch}", f"hf-hub:timm/{want.arch}"):
        why = backbone_mismatch(model, form)
        if default == want.tag:
            assert why is None, form
        else:
            assert why is not None and default in why and f"timm/{want.arch}.{want.tag}" in why, form


@pytest.mark.parametrize("model", TV_MODELS)
def test_a_bare_torchvision_name_is_accepted_exactly_when_torchvisions_default_is_the_published_one(model):
    want = published_backbone(model)
    default = _tv_default(want.arch)
    for form in (want.arch, f"torchvision:{want.arch}", f"{want.arch}.DEFAULT"):
        why = backbone_mismatch(model, form)
        if default == want.tag:
            assert why is None, form
        else:
            assert why is not None and default in why and f"{want.arch}.{want.tag}" in why, form
    # named as a timm model, a bare name is timm's default tag
    why = backbone_mismatch(model, f"timm/{want.arch}")
    if _timm_default_tag(want.arch) == TIMM_TORCHVISION_V1_TAG and want.tag == "IMAGENET1K_V1":
        assert why is None
    else:
        assert why is not None and _timm_default_tag(want.arch) in why
        assert f"timm/{want.arch}.{TIMM_TORCHVISION_V1_TAG}" in why


def test_the_cases_of_the_issue():
    assert backbone_mismatch("densenet", "densenet121") is None  # torchvision's only weights: IMAGENET1K_V1
    assert backbone_mismatch("convnext", "convnext_base") is None  # timm's default: fb_in22k_ft_in1k
    assert backbone_mismatch("efficientnet", "tf_efficientnet_b0") is None  # timm's default: ns_jft_in1k
    assert backbone_mismatch("dinovit1", "vit_large_patch16_224") is None
    why = backbone_mismatch("resnet", "resnet50")  # torchvision's DEFAULT is V2
    assert "IMAGENET1K_V2" in why and "torchvision:resnet50.IMAGENET1K_V1" in why and "timm/resnet50.tv_in1k" in why
    assert "ra_in1k" in backbone_mismatch("densenet", "timm/densenet121")


# --------------------------------------------------------------------------- refused forms


@pytest.mark.parametrize("model", TIMM_MODELS)
def test_every_other_timm_tag_of_the_architecture_is_refused(model):
    want = published_backbone(model)
    others = [n for n in timm.list_pretrained(f"{want.arch}.*") if n != f"{want.arch}.{want.tag}"]
    assert others  # every published architecture has other weights in timm
    for name in others:
        why = backbone_mismatch(model, name)
        assert why is not None and f"timm/{want.arch}.{want.tag}" in why, name
    why = backbone_mismatch(model, f"torchvision:{want.arch}")
    assert why is not None and "torchvision" in why


@pytest.mark.parametrize("model", TV_MODELS)
def test_other_torchvision_and_timm_weights_are_refused(model):
    want = published_backbone(model)
    for name in tvm.get_model_weights(want.arch).__members__:
        if name not in (want.tag, "DEFAULT"):
            assert backbone_mismatch(model, f"torchvision:{want.arch}.{name}") is not None, name
    for name in timm.list_pretrained(f"{want.arch}.*"):
        if name != f"{want.arch}.{TIMM_TORCHVISION_V1_TAG}":
            assert backbone_mismatch(model, name) is not None, name


@pytest.mark.parametrize("model", MODELS)
def test_other_published_backbones_are_refused(model):
    for other in MODELS:
        if other != model and published_backbone(other) != published_backbone(model):
            for form in _accepted_forms(other)[2:]:
                assert backbone_mismatch(model, form) is not None, (model, form)


@pytest.mark.parametrize(
    "text, library, arch, tag",
    [
        ("timm/convnext_base.fb_in22k_ft_in1k", "timm", "convnext_base", "fb_in22k_ft_in1k"),
        ("hf-hub:timm/vgg16.tv_in1k", "timm", "vgg16", "tv_in1k"),
        ("ResNet50_Weights.IMAGENET1K_V1", "torchvision", "resnet50", "IMAGENET1K_V1"),
        ("resnet50 (IMAGENET1K_V1)", "torchvision", "resnet50", "IMAGENET1K_V1"),
        ("resnet50.imagenet1k_v2", "torchvision", "resnet50", "IMAGENET1K_V2"),
        ("densenet121", None, "densenet121", None),
        ("facebook/dinov2-large-imagenet1k-1-layer", "transformers", "facebook/dinov2-large-imagenet1k-1-layer", None),
    ],
)
def test_parse_backbone_id(text, library, arch, tag):
    got = parse_backbone_id(text)
    assert (got.library, got.arch, got.tag) == (library, arch, tag)
