"""A synthetic scenario with a known answer, for the offline demo and the tests.

Ten classes, each with a unit text embedding ``t_k`` (orthonormal). Every image has a
target embedding ``z = s_y t_y + r + ε``: its class signal (strength ``s_y``), nuisance
``r`` along the other class prompts, and an image-specific part ``ε`` orthogonal to all
prompts, plus observation noise no feature explains. Two classifiers see the same images:

- ``benign``: its principal subspace encodes ``s_y t_y + r`` (everything class-related);
  its null space encodes only ``ε``. Null removal barely moves the translated feature
  relative to any class prompt: |AS| ≈ 0.3° for every class.
- ``leaky``: for the *planted* classes, part ``b`` of the class signal lives in the null
  space (``s_y = a + b`` with only ``a`` principal). Removing it moves the translated
  feature away from the class prompt: |AS| ≈ 18° for those classes, ≈ 0.3° for the rest.

Both heads have an exact null space (rank 10 of 64 features) and the true translator
``A`` is known, so the constructed truth per class is computed with it
(:func:`true_class_scores`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .nullspace import remove_null, split_head
from .scores import attribute_scores_toward

__all__ = ["Scenario", "make_scenario", "write_scenario", "true_class_scores", "write_image_folder", "CLASS_NAMES", "PLANTED"]

CLASS_NAMES = (
    "tench", "goldfish", "great white shark", "tree frog", "bald eagle",
    "sports car", "jellyfish", "espresso", "volcano", "daisy",
)
PLANTED = ("sports car", "jellyfish")


@dataclass
class Scenario:
    labels: np.ndarray  # N
    image_ids: list[str]
    embeddings: np.ndarray  # N×n
    text: np.ndarray  # c×n unit
    features: dict[str, np.ndarray]  # model -> N×m
    heads: dict[str, tuple[np.ndarray, np.ndarray]]  # model -> (W c×m, b c)
    translators: dict[str, np.ndarray]  # model -> true A (n×m)
    planted: tuple[int, ...]


def _orthonormal(rng: np.random.Generator, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def make_scenario(
    per_class: int = 60,
    num_features: int = 64,
    dim: int = 32,
    a: float = 1.0,
    b: float = 1.0,
    nuisance: float = 0.33,
    image_noise: float = 0.018,
    observation_noise: float = 0.01,
    seed: int = 0,
) -> Scenario:
    """Build the scenario (deterministic for a given seed)."""
    rng = np.random.default_rng(seed)
    c = len(CLASS_NAMES)
    m, n = num_features, dim
    planted = tuple(CLASS_NAMES.index(p) for p in PLANTED)
    basis = _orthonormal(rng, n)
    text = basis[:, :c].T  # c×n orthonormal prompts
    perp = basis[:, c:]  # n×(n−c): directions orthogonal to every prompt
    labels = np.repeat(np.arange(c), per_class)
    total = labels.size
    strength = np.full(total, a)
    is_planted = np.isin(labels, planted)
    strength[is_planted] += b
    coeff = nuisance * rng.normal(size=(total, c))  # nuisance along the class prompts
    coeff[np.arange(total), labels] = strength
    eps = image_noise * rng.normal(size=(total, n - c)) @ perp.T  # ⟂ every prompt
    embeddings = coeff @ text + eps

    features, heads, translators = {}, {}, {}
    for name in ("benign", "leaky"):
        v = _orthonormal(rng, m)
        vp, vn = v[:, :c], v[:, c:]
        # principal coordinates: the class-prompt coefficients (leaky keeps only `a` there)
        p = coeff.copy()
        if name == "leaky":
            p[is_planted, labels[is_planted]] -= b
        # the null translation A_n: onto ⟂-prompt directions for benign, onto everything for leaky
        if name == "benign":
            a_n = perp @ rng.normal(size=(n - c, m - c)) / np.sqrt(m - c)
            null_target = eps
        else:
            a_n = rng.normal(size=(n, m - c)) / np.sqrt(m - c)
            null_target = eps.copy()
            null_target[is_planted] += b * text[labels[is_planted]]
        q = null_target @ np.linalg.pinv(a_n).T  # minimum-norm null coordinates
        kernel = np.eye(m - c) - np.linalg.pinv(a_n) @ a_n  # invisible to the translator
        q += 0.05 * rng.normal(size=q.shape) @ kernel.T
        f = p @ vp.T + q @ vn.T
        # head: logits = 4·(principal coordinates) + small bias; W = 4·V_pᵀ has rank c
        w = 4.0 * vp.T
        bias = 0.01 * rng.normal(size=c)
        features[name] = f.astype(np.float32)
        heads[name] = (np.ascontiguousarray(w, dtype=np.float32), bias.astype(np.float32))
        translators[name] = text.T @ vp.T + a_n @ vn.T  # A = A_p V_pᵀ + A_n V_nᵀ
    ids = [f"img{i:05d}" for i in range(total)]
    # what no classifier feature explains: the target model's own measurement noise
    observed = embeddings + observation_noise * rng.normal(size=embeddings.shape)
    return Scenario(labels, ids, observed.astype(np.float32), np.ascontiguousarray(text), features, heads, translators, planted)


def true_class_scores(s: Scenario, model: str) -> dict[str, float]:
    """Per-class mean |AS| with the true translator on the stored features (the truth)."""
    f = s.features[model].astype(np.float64)
    w, _ = s.heads[model]
    sub = split_head(w, "rank", weight_eps=float(np.finfo(np.float32).eps))
    a_true = s.translators[model]
    as_own = attribute_scores_toward(f @ a_true.T, remove_null(f, sub) @ a_true.T, s.text, s.labels)
    return {CLASS_NAMES[k]: float(np.mean(np.abs(as_own[s.labels == k]))) for k in range(len(CLASS_NAMES))}


def write_scenario(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write ``benign.npz``, ``leaky.npz`` (precomputed backbones), ``clip.npz``
    (precomputed target) and ``truth.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = make_scenario(seed=seed)
    names = np.array(CLASS_NAMES, dtype=str)
    ids = np.array(s.image_ids, dtype=str)
    paths = {}
    for model in ("benign", "leaky"):
        w, b = s.heads[model]
        paths[model] = folder / f"{model}.npz"
        np.savez(paths[model], features=s.features[model], labels=s.labels, head_weight=w, head_bias=b, class_names=names, image_ids=ids)
    paths["target"] = folder / "clip.npz"
    np.savez(paths["target"], image_embeddings=s.embeddings, text_embeddings=s.text.astype(np.float32), image_ids=ids)
    truth = {
        "planted": list(PLANTED),
        "class_as_abs_mean": {model: true_class_scores(s, model) for model in ("benign", "leaky")},
    }
    paths["truth"] = folder / "truth.json"
    paths["truth"].write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    return paths


#: ImageNet synsets of the first classes, for the pipeline-check image folder
SYNSETS = ("n01440764", "n01443537", "n01484850")


def write_image_folder(root: Path, per_class: int = 4, size: int = 48, seed: int = 0) -> Path:
    """A tiny image folder (ImageNet synset sub-folders, PNG files) of coloured shapes."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    root = Path(root)
    for k, synset in enumerate(SYNSETS):
        d = root / synset
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array([40 + 80 * k, 200 - 60 * k, (90 + 50 * i) % 256], dtype=np.uint8)
            img = Image.new("RGB", (size, size), tuple(int(x) for x in base))
            draw = ImageDraw.Draw(img)
            x0, y0 = (int(v) for v in rng.integers(0, size // 2, size=2))
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            (draw.ellipse if k % 2 else draw.rectangle)([x0, y0, x0 + size // 3, y0 + size // 3], fill=colour)
            img.save(d / f"{synset}_{i}.png")
    return root


if __name__ == "__main__":  # python -m sing_audit.synthetic FOLDER
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "examples/synthetic/data")
    for key, path in write_scenario(target).items():
        print(f"{key}: {path}")
