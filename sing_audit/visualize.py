"""Visualizers: original and equivalent features rendered as pictures for the report.

A visualizer plugin registers a factory (``register_visualizers``) that builds a
:class:`Visualizer`. The run calls :func:`check_visualizer` when it builds the plan
(some target must be one the visualizer can render from), then
:func:`sing_audit.pipeline.evidence.render_evidence` for every model once its top images
are known.

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
from typing import Any

import numpy as np
from pydantic import Field

from .components import PluginOptions
from .errors import ConfigError

__all__ = ["RENDER_DIR", "Visualizer", "VisualizerOptions", "check_visualizer", "match_norms", "pair_seed", "visualizer_options"]

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


def visualizer_options(component) -> VisualizerOptions | None:
    """The options a visualizer component was built with (``None``: none of its own)."""
    opts = getattr(component.instance, "options", None)
    return opts if isinstance(opts, VisualizerOptions) else None


def check_visualizer(component, targets: list, source: str = "<config>") -> None:
    """Refuse a visualizer no target of the audit is compatible with (:class:`ConfigError`)."""
    vis = component.instance
    if not isinstance(vis, Visualizer):
        raise ConfigError(f"{source}: visualizer: plugin {component.plugin!r} does not build a visualizer")
    opts = visualizer_options(component)
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
