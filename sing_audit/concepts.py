"""Open-vocabulary concepts: concept-set objects, their digests, prompt ensembles, and
per-class angles / Attribute Scores toward K concepts.

Pure helpers (no config, no files): the concept-set *plugins* live in
``sing_audit.builtins.concept_sets`` and the probe in ``sing_audit.builtins.concepts_probe``.

Shapes: ``T(f)`` and ``T(f̃)`` are B×n (one row per image of a chunk), concept embeddings
K×n (unit rows), labels B head indices, c classes. Angles are degrees, float64. Only
B×K matrices are ever built (a chunk of images against every concept), never B×K×m:
callers bound B with :func:`chunk_rows_for`.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import DataError
from .scores import angle_matrix, unit_rows

__all__ = [
    "ConceptAccumulator",
    "ConceptScores",
    "ConceptSet",
    "check_concepts",
    "check_templates",
    "chunk_rows_for",
    "concept_digest",
    "concept_scores",
    "ensemble_embeddings",
    "normalize_concept",
    "rank_by_magnitude",
]

#: B×K float64 entries per chunk (~32 MB a matrix); several such matrices exist at once
CHUNK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------- concept sets


def normalize_concept(text: str) -> str:
    """Whitespace collapsed and trimmed: ``"  red   wine "`` -> ``"red wine"``."""
    return " ".join(str(text).split())


def concept_digest(concepts: Sequence[str]) -> str:
    """``sha256:<hex>`` of the ordered list (its compact JSON, UTF-8): order matters."""
    payload = json.dumps(list(concepts), ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


def check_concepts(items: Sequence[tuple[str, int | None]], source: str, unit: str = "line") -> list[str]:
    """Validate ``(concept, line)`` pairs read from ``source``; return the concepts.

    Each concept is whitespace-normalised. Raises :class:`DataError` naming the ``unit``
    (``line``, or ``entry`` for arrays) for
    an empty concept, a concept with braces (templates would misformat it), a duplicate
    (case-insensitive, with both lines), or when there is no concept at all.
    """
    out: list[str] = []
    seen: dict[str, int | None] = {}

    def at(line: int | None) -> str:
        return f"{source}, {unit} {line}" if line is not None else source

    for raw, line in items:
        concept = normalize_concept(raw)
        if not concept:
            raise DataError(f"{at(line)}: empty concept")
        if "{" in concept or "}" in concept:
            raise DataError(f"{at(line)}: concept {concept!r} contains braces, which prompt templates cannot hold")
        key = concept.casefold()
        if key in seen:
            first = seen[key]
            where = f" (first at {unit} {first})" if first is not None else ""
            raise DataError(f"{at(line)}: duplicate concept {concept!r}{where}; every concept must appear once")
        seen[key] = line
        out.append(concept)
    if not out:
        raise DataError(f"{source}: no concepts (the set is empty)")
    return out


class ConceptSet(abc.ABC):
    """A named, versioned, ordered list of concepts (words or short phrases).

    ``name`` and ``version`` say which set; :meth:`digest` pins its exact content, so a
    result records what was measured.
    """

    name: str = "concepts"
    version: str = "unversioned"

    @abc.abstractmethod
    def concepts(self) -> list[str]:
        """The concepts, in a fixed order, unique."""

    def digest(self) -> str:
        """``sha256:`` of the ordered list (see :func:`concept_digest`)."""
        return concept_digest(self.concepts())

    def embeddings(self):
        """K×n text embeddings of :meth:`concepts`, row for row, when the set brings its own
        (a file of embeddings); ``None`` (the default): the target's text encoder embeds them."""
        return None

    def describe(self) -> dict:
        """``{"name", "version", "digest", "size"}`` as recorded in results."""
        items = self.concepts()
        return {"name": self.name, "version": self.version, "digest": concept_digest(items), "size": len(items)}


# --------------------------------------------------------------------------- prompts


def check_templates(templates: Sequence[str]) -> list[str]:
    """Each template must hold exactly one ``{}``; raises ``ValueError`` otherwise."""
    templates = list(templates)
    if not templates:
        raise ValueError("give at least one template, e.g. 'an image of a {}'")
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"template {t!r} has no '{{}}' where the class name or concept goes")
        try:
            t.format("x")
        except (IndexError, KeyError, ValueError) as exc:
            raise ValueError(
                f"template {t!r} must contain exactly one '{{}}' and no other braces "
                f"(write literal braces as '{{{{' and '}}}}'): {exc}"
            ) from None
        if t.count("{}") != 1:
            raise ValueError(f"template {t!r} must contain exactly one '{{}}'")
    return templates


def ensemble_embeddings(
    encode: Callable[[Sequence[str]], np.ndarray],
    concepts: Sequence[str],
    templates: Sequence[str],
    batch_concepts: int = 256,
) -> np.ndarray:
    """Template ensemble per concept: mean of the normalised template embeddings,
    renormalised (the semantics of ``Target.class_text_embeddings``). K×n float64.

    ``encode`` maps P prompts to P×n raw embeddings. Concepts are encoded in batches of
    ``batch_concepts`` (× the number of templates prompts each).
    """
    templates = list(templates)
    concepts = list(concepts)
    t = len(templates)
    parts: list[np.ndarray] = []
    for start in range(0, len(concepts), batch_concepts):
        names = concepts[start : start + batch_concepts]
        prompts = [tpl.format(name) for name in names for tpl in templates]
        emb = np.asarray(encode(prompts), dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] != len(prompts):
            raise DataError(f"text encoder returned shape {emb.shape} for {len(prompts)} prompts")
        emb = unit_rows(emb).reshape(len(names), t, -1)
        parts.append(unit_rows(emb.mean(axis=1)))
    if not parts:
        return np.zeros((0, 0))
    return np.concatenate(parts, axis=0)


# --------------------------------------------------------------------------- scores


def chunk_rows_for(num_concepts: int, max_rows: int = 8192, elements: int = CHUNK_ELEMENTS) -> int:
    """Rows per chunk so that a B×K matrix stays under ``elements`` entries."""
    return int(max(1, min(max_rows, elements // max(1, num_concepts))))


def rank_by_magnitude(values: np.ndarray, k: int | None = None) -> np.ndarray:
    """Indices of ``values`` (K) by ``|value|`` descending, ties in index order; NaN last."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    v = np.where(np.isfinite(v), v, -np.inf)
    order = np.argsort(-v, kind="stable")
    return order if k is None else order[:k]


@dataclass
class ConceptScores:
    """Per-class and per-model angles and AS toward K concepts.

    ``counts`` c images per class; ``angle_mean`` c×K mean ``angle(T(f), t)`` over each
    class's images and ``as_mean`` c×K mean ``AS = angle(T(f), t) − angle(T(f̃), t)``
    (NaN rows for classes without images); ``model_as_mean`` K mean AS and
    ``model_abs_as_mean`` K mean |AS|, both pooled over all images.

    The SING authors' dictionary score, beside ours: ``dcos = cos(T(f), t) − cos(T(f̃), t)``
    (unitless; of opposite sign to AS, since a larger angle is a smaller cosine), which
    their code ranks by ``|dcos|``. ``dcos_mean`` c×K per class, ``model_dcos_mean`` and
    ``model_abs_dcos_mean`` K over all images.
    """

    counts: np.ndarray
    angle_mean: np.ndarray
    as_mean: np.ndarray
    model_as_mean: np.ndarray
    model_abs_as_mean: np.ndarray
    dcos_mean: np.ndarray | None = None
    model_dcos_mean: np.ndarray | None = None
    model_abs_dcos_mean: np.ndarray | None = None


class ConceptAccumulator:
    """Accumulates per-class sums of angles and AS toward K concepts, chunk by chunk.

    :param concepts: K×n concept embeddings (normalised here).
    :param num_classes: c; labels must lie in ``[0, c)``.
    """

    def __init__(self, concepts: np.ndarray, num_classes: int):
        self.concepts = unit_rows(np.asarray(concepts, dtype=np.float64))
        if self.concepts.ndim != 2:
            raise ValueError(f"concept embeddings must be K×n, got shape {self.concepts.shape}")
        k = self.concepts.shape[0]
        self.num_classes = int(num_classes)
        self.counts = np.zeros(self.num_classes, dtype=np.int64)
        self.angle_sum = np.zeros((self.num_classes, k))
        self.as_sum = np.zeros((self.num_classes, k))
        self.model_as_sum = np.zeros(k)
        self.model_abs_sum = np.zeros(k)
        self.dcos_sum = np.zeros((self.num_classes, k))
        self.model_dcos_sum = np.zeros(k)
        self.model_abs_dcos_sum = np.zeros(k)
        self.n = 0

    def add(self, translated: np.ndarray, translated_removed: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Add one chunk: B×n ``T(f)``, B×n ``T(f̃)``, B labels. Returns the chunk's B×K AS."""
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if translated.shape != translated_removed.shape or translated.shape[0] != labels.shape[0]:
            raise ValueError(
                f"chunk shapes disagree: T(f) {translated.shape}, T(f̃) {translated_removed.shape}, labels {labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        before = angle_matrix(translated, self.concepts)  # B×K
        as_ = before - angle_matrix(translated_removed, self.concepts)  # B×K
        if labels.size == 0:
            return as_
        # the SING authors' score: the change of cosine (their sign: original − equivalent)
        dcos = (unit_rows(translated) - unit_rows(translated_removed)) @ self.concepts.T  # B×K
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        classes, starts = np.unique(sorted_labels, return_index=True)
        self.angle_sum[classes] += np.add.reduceat(before[order], starts, axis=0)
        self.as_sum[classes] += np.add.reduceat(as_[order], starts, axis=0)
        self.dcos_sum[classes] += np.add.reduceat(dcos[order], starts, axis=0)
        self.model_dcos_sum += dcos.sum(axis=0)
        self.model_abs_dcos_sum += np.abs(dcos).sum(axis=0)
        self.counts[classes] += np.diff(np.append(starts, labels.size))
        self.model_as_sum += as_.sum(axis=0)
        self.model_abs_sum += np.abs(as_).sum(axis=0)
        self.n += labels.size
        return as_

    def result(self) -> ConceptScores:
        counts = self.counts.astype(np.float64)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            angle_mean = np.where(counts > 0, self.angle_sum / counts, np.nan)
            as_mean = np.where(counts > 0, self.as_sum / counts, np.nan)
            dcos_mean = np.where(counts > 0, self.dcos_sum / counts, np.nan)
        k = self.concepts.shape[0]
        model_as = self.model_as_sum / self.n if self.n else np.full(k, np.nan)
        model_abs = self.model_abs_sum / self.n if self.n else np.full(k, np.nan)
        model_dcos = self.model_dcos_sum / self.n if self.n else np.full(k, np.nan)
        model_abs_dcos = self.model_abs_dcos_sum / self.n if self.n else np.full(k, np.nan)
        return ConceptScores(self.counts.copy(), angle_mean, as_mean, model_as, model_abs, dcos_mean, model_dcos,
                             model_abs_dcos)


def concept_scores(
    translated: np.ndarray,
    translated_removed: np.ndarray,
    labels: np.ndarray,
    concepts: np.ndarray,
    num_classes: int,
    chunk_rows: int | None = None,
) -> ConceptScores:
    """:class:`ConceptScores` for N×n ``T(f)``, N×n ``T(f̃)``, N labels, K×n concepts,
    computed in row chunks (at most ``chunk_rows`` × K angles at a time)."""
    acc = ConceptAccumulator(concepts, num_classes)
    n = translated.shape[0]
    step = chunk_rows or chunk_rows_for(acc.concepts.shape[0])
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        acc.add(np.asarray(translated[rows], dtype=np.float64), np.asarray(translated_removed[rows], dtype=np.float64), labels[rows])
    return acc.result()
