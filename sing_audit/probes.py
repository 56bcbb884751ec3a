"""What a probe receives and returns.

The runner builds one :class:`ProbeContext` per (backbone, target) pair after the
translator is cross-fitted; every configured probe runs on it and returns a
:class:`ProbeOutput`: per-image columns (they go into the model's CSV) and a summary
(it goes into ``results.json`` under ``models[i].probes[<name>]``). A probe that
provides ``scores`` (IS, AS, AS contrast per image) sets the model's headline numbers;
the built-in ``null_removal`` does.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .components import LinearHead, Target
from .nullspace import HeadSubspaces

__all__ = ["ProbeContext", "ProbeOutput", "Scores", "Probe", "row_chunks"]

CHUNK_ROWS = 8192


def row_chunks(n: int, size: int = CHUNK_ROWS) -> Iterator[slice]:
    """Slices covering ``range(n)`` in chunks of ``size`` rows."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@dataclass
class ProbeContext:
    """Everything a probe may read about one model under one target.

    ``features`` N×m (possibly memory-mapped float32), ``labels`` N head indices (ground
    truth, or the prediction when the data has no labels), ``embeddings`` N×n the
    target's raw image embeddings, ``translated`` N×n the cross-fitted ``T(f)``,
    ``class_text`` c×n unit class prompt embeddings. ``translate(F, rows)`` applies, to
    changed features of the images ``rows``, the translator that did not see them.
    """

    model_name: str
    backbone_name: str
    target_name: str
    features: np.ndarray
    labels: np.ndarray
    head: LinearHead
    subspaces: HeadSubspaces
    embeddings: np.ndarray
    translated: np.ndarray
    class_text: np.ndarray
    class_names: list[str]
    folds: np.ndarray
    translate: Callable[[np.ndarray, slice], np.ndarray]
    target: Target
    generator: np.random.Generator
    image_ids: list[str] = field(default_factory=list)
    #: the fitted translator of each fold (``folds[i]`` indexes the one that scored image i)
    translators: list = field(default_factory=list)
    #: K prompts -> K×n raw text embeddings through the target, loaded on demand and cached
    #: on disk by the runner (raises DataError for a target without a text encoder)
    encode_text: Callable[[list[str]], np.ndarray] | None = None
    #: the run's plugin registry (probes that look up other components use it)
    registry: Any = None
    #: the loaded image backbone (``None`` for precomputed features); filled for probes
    #: whose class sets ``needs_backbone``
    backbone: Any = None
    #: ``images(rows)``: the images of the given rows (1-D int array into ``features``)
    #: exactly as ``backbone.features`` receives them, a k×C×H×W float tensor
    images: Callable[[np.ndarray], Any] | None = None


@dataclass
class Scores:
    """Per-image IS, AS toward the image's own class prompt, and AS contrast (N each)."""

    image_score: np.ndarray
    attribute_score: np.ndarray
    attribute_contrast: np.ndarray


@dataclass
class ProbeOutput:
    per_image: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    scores: Scores | None = None


class Probe(abc.ABC):
    """A measurement on one model; built by ``factory(options)``."""

    #: True when the probe needs the loaded image backbone and the images themselves
    #: (``ctx.backbone`` and ``ctx.images``); the runner then loads the model even when
    #: the features come from the cache.
    needs_backbone: bool = False
    #: True when the probe needs the target's own image encoder (``ctx.target`` loaded,
    #: an ``ImageTarget``); the runner then loads it even when the embeddings are cached.
    needs_target: bool = False

    @abc.abstractmethod
    def run(self, ctx: ProbeContext) -> ProbeOutput:
        """Measure; pure computation on the context (no I/O)."""

    def aggregate(self, summaries: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
        """Optional audit-level result from every model's summary (keyed ``name@target``);
        stored under ``probe_aggregates[<probe>]`` in results.json. ``None``: nothing to add."""
        return None
