"""The plugin's own tests: sing-audit's contract checks on every variant, weights, registration.

Run from this folder after ``pip install -e .`` (or with ``src`` on ``PYTHONPATH``)::

    pytest -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sing_audit_tinynet.backbone import TinyNetBackbone
from sing_audit_tinynet.model import VARIANTS

from sing_audit.errors import WeightsError
from sing_audit.testing import check_backbone


def _images(size: int = 64) -> torch.Tensor:
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_contract(variant):
    backbone = TinyNetBackbone({"model": variant, "weights": "random", "num_classes": 5})
    backbone.load("cpu")
    m = VARIANTS[variant][-1]
    report = check_backbone(backbone, _images(), head_module=backbone.model.head, expected_null_dim=m - 5)
    assert report.feature_error == 0.0  # the features are what the head receives, bit for bit
    assert report.num_features == m and report.num_classes == 5
    assert backbone.random_weights and backbone.describe()["random_weights"] is True


def test_head_folds_the_temperature():
    backbone = TinyNetBackbone({"weights": "random", "num_classes": 4, "seed": 1})
    backbone.load("cpu")
    with torch.no_grad():
        backbone.model.head.logit_scale.fill_(np.log(3.0))
    head = backbone.head()
    raw = backbone.model.head.weight.detach().double().numpy()
    scale = float(np.exp(backbone.model.head.logit_scale.double().item()))  # 3, up to float32 rounding
    assert abs(scale - 3.0) < 1e-6
    np.testing.assert_allclose(head.weight, scale * raw, rtol=1e-12)
    check_backbone(backbone, _images(), head_module=backbone.model.head)


def test_weights_from_a_file_round_trip(tmp_path):
    from safetensors.torch import save_file

    source = TinyNetBackbone({"weights": "random", "num_classes": 3, "seed": 7})
    source.load("cpu")
    path = tmp_path / "tiny.safetensors"
    save_file(source.model.state_dict(), str(path))

    loaded = TinyNetBackbone({"weights": "tiny.safetensors", "base_dir": str(tmp_path), "num_classes": 3})
    assert not loaded.random_weights
    loaded.load("cpu")
    images = _images()
    torch.testing.assert_close(loaded.logits(images), source.logits(images), rtol=0, atol=0)
    d = loaded.describe()
    assert d["random_weights"] is False and d["weights_digest"].startswith("sha256:")
    check_backbone(loaded, images, head_module=loaded.model.head)

    wrong = TinyNetBackbone({"weights": str(path), "num_classes": 4})
    with pytest.raises(WeightsError, match="do not match the architecture"):
        wrong.load("cpu")


@pytest.mark.parametrize("weights", ["pretrained", "some_tag", "missing.safetensors"])
def test_no_silent_random_weights(weights, tmp_path):
    with pytest.raises(WeightsError):
        TinyNetBackbone({"weights": weights, "num_classes": 3, "base_dir": str(tmp_path)})


def test_options_are_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="did you mean"):
        TinyNetBackbone.Options(model="tinynet_x", weights="random", num_classes=3)
    with pytest.raises(ValidationError, match="class_names has 2 names"):
        TinyNetBackbone.Options(weights="random", num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValidationError, match="Extra inputs"):
        TinyNetBackbone.Options(weights="random", num_classes=3, colour="red")


def test_registered_through_the_entry_point_module():
    from sing_audit_tinynet import plugin

    from sing_audit.host import create_plugin_manager, create_registry

    pm = create_plugin_manager(load_entry_points=False)
    pm.register(plugin, name="tinynet")
    registry = create_registry(pm)
    assert registry.get("backbone", "tinynet").factory is TinyNetBackbone
    textures = registry.get("concept_set", "dtd_textures").factory()
    assert len(textures.concepts()) == 47 and textures.concepts()[0] == "banded"
    assert registry.get("probe", "prompt_flip").options_model is not None
