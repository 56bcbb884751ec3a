"""Visualizers: original and equivalent features rendered as pictures for the report.

A visualizer plugin registers a factory (``register_visualizers``) that builds a
:class:`Visualizer`. The runner calls :func:`check_visualizer` when it builds the plan
(some target must be one the visualizer can render from), then :func:`render_evidence`
for every model once its top images are known.

The protocol (SING): both features are translated into the target space by the
cross-fitted translator that did not see the image, ``T(f)`` and ``T(f̃)`` with
``f̃ = f − Π_n f``; the equivalent embedding is rescaled to the original's norm; both
renders of a pair share one seed, so the feature is the only difference between them.
PNGs go into ``renderings/<model>@<target>/`` inside the run folder, named by a content
key (visualizer, embeddings, seed): a rerun with nothing changed renders nothing.
"""

from __future__ import annotations

import abc
import hashlib
import io
import logging
from typing import Any

import numpy as np
from pydantic import Field

from .components import PluginOptions
from .errors import ConfigError
from .nullspace import remove_null
from .store import atomic_write_bytes, content_key, safe_child, slug

__all__ = ["Visualizer", "VisualizerOptions", "check_visualizer", "match_norms", "pair_seed", "render_evidence"]

log = logging.getLogger("sing_audit")

RENDER_DIR = "renderings"


class VisualizerOptions(PluginOptions):
    """Options every visualizer shares."""

    max_images: int = Field(4, ge=0, description="render at most this many of each model's top images")
    target: str | None = Field(None, description="name of the target to render under (default: every compatible one)")


class Visualizer(abc.ABC):
    """Renders target-space embeddings as pictures; built by ``factory(options)``."""

    options: VisualizerOptions

    @abc.abstractmethod
    def check_target(self, target) -> str | None:
        """``None`` when embeddings of ``target`` (a built, unloaded target) can be
        rendered, else the reason why not (shown in the config error)."""

    def bind(self, target) -> None:
        """Called once with the first compatible target, before :meth:`load`."""

    @abc.abstractmethod
    def load(self, device: str) -> None:
        """Build the renderer on ``device``."""

    @abc.abstractmethod
    def render(self, original: np.ndarray, equivalent: np.ndarray, seeds: list[int]) -> list[tuple[Any, Any]]:
        """k×n original and k×n equivalent embeddings, k seeds -> k ``(PIL, PIL)`` pairs.

        Both pictures of pair i are drawn with ``seeds[i]`` and identical noise, so they
        differ only where the embeddings differ.
        """

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Everything a picture depends on besides the embedding and the seed."""


def _options(component) -> VisualizerOptions | None:
    opts = getattr(component.instance, "options", None)
    return opts if isinstance(opts, VisualizerOptions) else None


def check_visualizer(component, targets: list, source: str = "<config>") -> None:
    """Refuse a visualizer no target of the audit is compatible with (:class:`ConfigError`)."""
    vis = component.instance
    if not isinstance(vis, Visualizer):
        raise ConfigError(f"{source}: visualizer: plugin {component.plugin!r} does not build a visualizer")
    opts = _options(component)
    wanted = opts.target if opts is not None else None
    candidates = [t for t in targets if wanted is None or t.name == wanted]
    if wanted is not None and not candidates:
        from .host import suggest

        raise ConfigError(
            f"{source}: visualizer.target: no target is named {wanted!r}{suggest(wanted, [t.name for t in targets])}"
        )
    reasons = {t.name: vis.check_target(t.instance) for t in candidates}
    ok = [t for t in candidates if reasons[t.name] is None]
    if not ok:
        why = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
        raise ConfigError(
            f"{source}: visualizer: plugin {component.plugin!r} cannot render under any target of this audit ({why}); "
            "add a target it can render from, or remove the visualizer"
        )
    vis.bind(ok[0].instance)


def pair_seed(run_seed: int, image_id: str) -> int:
    """The seed of one pair: a 32-bit number from the run's seed and the image id."""
    digest = hashlib.sha256(f"sing-audit-render\0{int(run_seed)}\0{image_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def match_norms(equivalent: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Rows of ``equivalent`` rescaled to the norms of the rows of ``original`` (k×n).

    A zero row stays zero.
    """
    eq = np.asarray(equivalent, dtype=np.float64)
    target = np.linalg.norm(np.asarray(original, dtype=np.float64), axis=1, keepdims=True)
    norms = np.linalg.norm(eq, axis=1, keepdims=True)
    scale = np.divide(target, norms, out=np.zeros_like(norms), where=norms > 0)
    return eq * scale


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def render_evidence(runner, component, ctx, top_images) -> dict[str, Any]:
    """Render the model's top images (its ``top_images`` evidence) as (original,
    equivalent) pairs; returns what ``results.json`` keeps under
    ``models[i].probes["renderings"]``."""
    vis: Visualizer = component.instance
    opts = _options(component)
    info: dict[str, Any] = {"plugin": component.plugin}
    if opts is not None and opts.target is not None and opts.target != ctx.target_name:
        info["note"] = f"not rendered: the visualizer renders under target {opts.target!r}"
        return info
    reason = vis.check_target(ctx.target)
    if reason is not None:
        info["note"] = f"not rendered under target {ctx.target_name}: {reason}"
        return info
    limit = opts.max_images if opts is not None else 4
    evidence = list(top_images)[:limit]
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
    seeds = [pair_seed(runner.cfg.run.seed, ev.image_id) for ev in evidence]

    describe = vis.describe()
    folder = f"{RENDER_DIR}/{slug(ctx.model_name)}@{slug(ctx.target_name)}"
    out_root = runner.out
    names = []
    for i, ev in enumerate(evidence):
        key = content_key(
            "rendering", describe, hashlib.sha256(original[i].tobytes() + equivalent[i].tobytes()).hexdigest(), seeds[i]
        )[:20]
        names.append((f"{folder}/{i:03d}-{key}-original.png", f"{folder}/{i:03d}-{key}-equivalent.png"))
    todo = [
        i for i, pair in enumerate(names) if not all(safe_child(out_root, rel).is_file() for rel in pair)
    ]
    if todo:
        runner.ensure_loaded(vis)
        pairs = vis.render(original[todo], equivalent[todo], [seeds[i] for i in todo])
        if len(pairs) != len(todo):
            raise RuntimeError(f"visualizer {component.plugin} returned {len(pairs)} pairs for {len(todo)} requested")
        for i, (img_o, img_e) in zip(todo, pairs):
            atomic_write_bytes(safe_child(out_root, names[i][0]), _png(img_o))
            atomic_write_bytes(safe_child(out_root, names[i][1]), _png(img_e))
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
