"""A model's evidence: its most leaking images (with thumbnails) and, with a visualizer,
their (original, equivalent) renderings (see :mod:`sing_audit.visualize`)."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..nullspace import remove_null
from ..probes import ProbeContext
from ..results import ImageEvidence
from ..store import atomic_write_bytes, content_key, safe_child, slug
from ..visualize import RENDER_DIR, Visualizer, match_norms, pair_seed, visualizer_options
from .devices import ModelLoader

__all__ = ["render_evidence", "top_images"]

log = logging.getLogger("sing_audit")


def top_images(ids, labels, class_names, scores, k: int, thumbnail: Callable[[str], str | None]) -> list[ImageEvidence]:
    """The ``k`` images with the largest |AS|; ``thumbnail(image_id)``: its thumbnail's
    path in the output folder, or ``None``."""
    if k == 0 or labels.size == 0:
        return []
    order = np.argsort(-np.abs(np.nan_to_num(scores.attribute_score)), kind="stable")[:k]
    out = []
    for i in order:
        image_id = ids[i] if ids is not None else str(i)
        out.append(
            ImageEvidence(
                image_id=image_id,
                label=int(labels[i]),
                class_name=class_names[int(labels[i])],
                as_score=float(scores.attribute_score[i]),
                is_score=float(scores.image_score[i]),
                as_contrast=float(scores.attribute_contrast[i]),
                thumbnail=thumbnail(image_id),
            )
        )
    return out


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def render_evidence(component, ctx: ProbeContext, evidence: list[ImageEvidence], *, seed: int, out: Path,
                    loader: ModelLoader) -> dict[str, Any]:
    """Render the model's top images ``evidence`` as (original, equivalent) pairs into the
    output folder ``out`` (``seed``: the run's); returns what ``results.json`` keeps under
    ``models[i].probes["renderings"]``."""
    vis: Visualizer = component.instance
    opts = visualizer_options(component)
    info: dict[str, Any] = {"plugin": component.plugin}
    if opts is not None and opts.target is not None and opts.target != ctx.target_name:
        info["note"] = f"not rendered: the visualizer renders under target {opts.target!r}"
        return info
    reason = vis.check_target(ctx.target)
    if reason is not None:
        info["note"] = f"not rendered under target {ctx.target_name}: {reason}"
        return info
    limit = opts.max_images if opts is not None else 4
    evidence = list(evidence)[:limit]
    if not evidence:
        return info
    positions = {image_id: i for i, image_id in enumerate(ctx.image_ids)}
    rows = np.array([positions[ev.image_id] if ctx.image_ids else int(ev.image_id) for ev in evidence], dtype=np.int64)

    original = np.asarray(ctx.translated[rows], dtype=np.float64)
    if ctx.subspaces.null_dim == 0:
        equivalent = original.copy()
    else:
        equivalent = np.asarray(ctx.translate(remove_null(ctx.features[rows], ctx.subspaces), rows), dtype=np.float64)
    scale_note = None
    if ctx.translators and getattr(ctx.translators[0], "normalized_targets", False):
        # a translator fitted on unit embeddings: bring T(f) back to the renderer's scale
        raw_norm = float(np.median(np.linalg.norm(np.asarray(ctx.embeddings, dtype=np.float64), axis=1)))
        original = original / np.maximum(np.linalg.norm(original, axis=1, keepdims=True), 1e-300) * raw_norm
        scale_note = f"translator outputs unit embeddings; originals rescaled to the median raw norm {raw_norm:.6g}"
    equivalent = match_norms(equivalent, original)
    seeds = [pair_seed(seed, ev.image_id) for ev in evidence]

    describe = vis.describe()
    folder = f"{RENDER_DIR}/{slug(ctx.model_name)}@{slug(ctx.target_name)}"
    names = []
    for i, ev in enumerate(evidence):
        key = content_key(
            "rendering", describe, hashlib.sha256(original[i].tobytes() + equivalent[i].tobytes()).hexdigest(), seeds[i]
        )[:20]
        names.append((f"{folder}/{i:03d}-{key}-original.png", f"{folder}/{i:03d}-{key}-equivalent.png"))
    todo = [i for i, pair in enumerate(names) if not all(safe_child(out, rel).is_file() for rel in pair)]
    if todo:
        loader.ensure_loaded(vis)
        pairs = vis.render(original[todo], equivalent[todo], [seeds[i] for i in todo])
        if len(pairs) != len(todo):
            raise RuntimeError(f"visualizer {component.plugin} returned {len(pairs)} pairs for {len(todo)} requested")
        for i, (img_o, img_e) in zip(todo, pairs):
            atomic_write_bytes(safe_child(out, names[i][0]), _png(img_o))
            atomic_write_bytes(safe_child(out, names[i][1]), _png(img_e))
    else:
        log.info("visualizer %s: %d pair(s) from earlier runs", component.plugin, len(names))
    info.update(
        describe=describe,
        protocol={
            "original": "cross-fitted T(f)",
            "equivalent": "cross-fitted T(f - Π_n f), rescaled to the norm of the original",
            "seed": "one per pair, from run.seed and the image id; both renders share it",
            **({"scale": scale_note} if scale_note else {}),
        },
        images={
            ev.image_id: {"original": names[i][0], "equivalent": names[i][1], "seed": seeds[i]}
            for i, ev in enumerate(evidence)
        },
    )
    return info
