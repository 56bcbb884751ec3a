"""The pre-flight of the feature width: ``sing-audit validate`` refuses a translator whose
input width (a published SING translator's ``in_dim``) is not the backbone's feature
width, when the backbone can tell that width before loading (a precomputed file's header,
an architecture's declared sizes); a backbone that cannot tell is left to the run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import save_file

from sing_audit.builtins.precomputed import PrecomputedBackbone, array_shape
from sing_audit.cli import main
from sing_audit.errors import ConfigError
from sing_audit.pipeline.plan import check_feature_dims


def _reference_translator(root: Path, in_dim: int, out_dim: int, model_name: str = "dinovit1") -> Path:
    """A translator folder as the authors lay it out: metadata.yaml + best.pt (a linear map)."""
    folder = root / "translators" / model_name / "linear"
    folder.mkdir(parents=True)
    meta = {"model_name": model_name, "translator_name": "linear", "architecture": "linear",
            "embedding_backend": "kakao_karlo_v1_alpha_image_variations", "in_dim": in_dim, "out_dim": out_dim,
            "checkpoint_file": "best.pt"}
    (folder / "metadata.yaml").write_text(yaml.safe_dump(meta), encoding="utf-8")
    g = torch.Generator().manual_seed(0)
    torch.save({"weight": torch.randn(out_dim, in_dim, generator=g), "bias": torch.randn(out_dim, generator=g)},
               folder / "best.pt")
    return folder


def _widths(scenario_dir: Path) -> tuple[int, int]:
    with np.load(scenario_dir / "benign.npz") as f, np.load(scenario_dir / "clip.npz") as z:
        return int(f["features"].shape[1]), int(z["image_embeddings"].shape[1])


def test_validate_refuses_a_translator_for_another_width(synthetic_config, scenario_dir, tmp_path, capsys):
    m, n = _widths(scenario_dir)
    folder = _reference_translator(tmp_path, in_dim=m + 5, out_dim=n)
    cfg = synthetic_config(translator={"plugin": "sing_reference", "path": str(folder)})
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"in_dim {m + 5}" in err and f"backbones[0] 'benign' gives {m}-dimensional features" in err
    assert "fitted on the features of timm vit_large_patch16_224.augreg_in21k_ft_in1k" in err
    assert "translator: linear" in err
    assert not (cfg.parent / "out").exists()


def test_validate_refuses_a_compared_translator_for_another_width(synthetic_config, scenario_dir, tmp_path, capsys):
    m, n = _widths(scenario_dir)
    folder = _reference_translator(tmp_path, in_dim=m - 1, out_dim=n)
    cfg = synthetic_config(compare_translators=[{"plugin": "sing_reference", "path": str(folder)}])
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "compare_translators[0]" in err and f"in_dim {m - 1}" in err and f"gives {m}-dimensional" in err


def test_validate_accepts_the_matching_width(synthetic_config, scenario_dir, tmp_path, capsys):
    m, n = _widths(scenario_dir)
    folder = _reference_translator(tmp_path, in_dim=m, out_dim=n)
    cfg = synthetic_config(translator={"plugin": "sing_reference", "path": str(folder)})
    assert main(["validate", str(cfg)]) == 0, capsys.readouterr().err


def _component(name, instance):
    return SimpleNamespace(name=name, instance=instance)


def test_a_backbone_that_cannot_tell_is_left_to_the_run():
    """``None`` (a forward pass would be needed) or no method at all: no error, no guess."""
    translator = _component("ref", SimpleNamespace(input_dim=lambda: 12, input_hint=lambda: "fix"))
    unknown = _component("dyn", SimpleNamespace(declared_feature_dim=lambda: None))
    silent = _component("old", object())
    check_feature_dims([unknown, silent], [("translator", translator)])
    fitted = _component("linear", SimpleNamespace(input_dim=lambda: None))
    check_feature_dims([_component("b", SimpleNamespace(declared_feature_dim=lambda: 7))], [("translator", fitted)])
    with pytest.raises(ConfigError, match=r"translator: translator 'ref' takes 12-dimensional features \(in_dim 12\), "
                                          r"but backbones\[1\] 'b' gives 7-dimensional features; fix"):
        check_feature_dims([unknown, _component("b", SimpleNamespace(declared_feature_dim=lambda: 7))],
                           [("translator", translator)])


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_precomputed_width_comes_from_the_header(tmp_path, suffix):
    path = tmp_path / f"f{suffix}"
    arrays = {"features": np.zeros((5, 9), np.float32), "head_weight": np.zeros((3, 9), np.float32)}
    if suffix == ".npz":
        np.savez_compressed(path, **arrays)
    else:
        save_file(arrays, str(path))
    b = PrecomputedBackbone(PrecomputedBackbone.Options(path=path))
    assert b.declared_feature_dim() == 9 and b._arrays is None  # nothing but the header was read
    assert array_shape(path, "nothing") is None
    assert PrecomputedBackbone(PrecomputedBackbone.Options(path=tmp_path / "missing.npz")).declared_feature_dim() is None
