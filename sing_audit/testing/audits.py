"""Audits to test with: configs for the synthetic scenario and for tiny image folders.

For plugin authors' tests as much as for sing-audit's own. Everything runs offline: the
synthetic scenario is generated (:mod:`sing_audit.synthetic`), image folders are
written, targets are precomputed arrays aligned by image ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

__all__ = ["PIPELINE_POLICY", "image_folder_audit", "save_npz", "save_random_target", "synthetic_audit", "write_config"]

#: the policy of pipeline tests on tiny image folders: with a few images per class no class
#: reaches min_images, so the models are "not assessed" (exit 1) — the test checks the
#: pipeline, not a verdict, and says so, like examples/pipeline_check/audit.yaml
PIPELINE_POLICY = {"allow_not_assessed": True}


def write_config(folder: Path, data: dict, name: str = "audit.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def synthetic_audit(folder: Path, scenario_dir: Path, **extra) -> Path:
    """A config auditing the synthetic scenario written into ``scenario_dir``
    (:func:`sing_audit.synthetic.write_scenario`): its two backbones under its CLIP-like
    target, output ``folder/out``; ``extra`` keys replace the config's."""
    data = {
        "name": "synthetic",
        "output": str(Path(folder) / "out"),
        "target": {"plugin": "precomputed", "name": "clip", "path": str(Path(scenario_dir) / "clip.npz")},
        "backbones": [
            {"name": "benign", "plugin": "precomputed", "path": str(Path(scenario_dir) / "benign.npz")},
            {"name": "leaky", "plugin": "precomputed", "path": str(Path(scenario_dir) / "leaky.npz")},
        ],
        "run": {"bootstrap": 200},
    }
    data.update(extra)
    return write_config(Path(folder), data)


def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def save_random_target(path: Path, image_ids: list[str], dim: int = 8) -> Path:
    """A precomputed target of random embeddings (seed 0) for the images ``image_ids``
    and the 1000 ImageNet class prompts, so that an audit runs no target model."""
    rng = np.random.default_rng(0)
    return save_npz(
        path,
        image_embeddings=rng.normal(size=(len(image_ids), dim)).astype(np.float32),
        text_embeddings=rng.normal(size=(1000, dim)).astype(np.float32),
        image_ids=np.array(image_ids),
    )


def image_folder_audit(
    tmp_path: Path, backbones: list[dict], per_class: int = 4, size: int = 32, root: Path | None = None, **extra
) -> Path:
    """A tiny image-folder audit (3 ImageNet synset classes) with a precomputed target
    aligned by image ids, so only the backbones under test run a model. Returns the
    config path; ``extra`` keys (probes, policy, run, dataset options...) are merged in.
    ``root``: an existing folder of that layout (e.g. with a corrupt image) instead of a new one."""
    from sing_audit.synthetic import SYNSETS, write_image_folder

    if root is None:
        root = write_image_folder(tmp_path / "val", per_class=per_class, size=size)
    save_random_target(tmp_path / "t.npz", [f"{s}/{s}_{i}.png" for s in SYNSETS for i in range(per_class)])
    data = {
        "output": "out",
        "dataset": {"plugin": "image_folder", "root": str(root), **extra.pop("dataset", {})},
        "target": {"plugin": "precomputed", "path": "t.npz"},
        "backbones": backbones,
        "run": {"device": "cpu", "folds": 2, "bootstrap": 100},
        "policy": dict(PIPELINE_POLICY),
    }
    data.update(extra)
    return write_config(tmp_path, data)
