"""Alignment of a backbone's features with a target's embeddings, and the cross-fitted
translators: each image is scored by a translator fitted on the other folds."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis import fidelity_figures
from ..errors import DataError
from ..nullspace import HeadSubspaces, remove_null
from ..probes import row_chunks
from ..progress import progress
from ..results import TranslatorComparison
from ..ridge import cross_fit_folds
from ..scores import attribute_scores_toward, image_scores, unit_rows
from ..store import atomic_write_bytes, content_key
from .sources import EmbeddingSource, FeatureSource

__all__ = ["CrossFitted", "FitSettings", "align", "check_finite", "compare_family", "cross_fit", "fit_family",
           "translate_by_fold"]

log = logging.getLogger("sing_audit")


# --------------------------------------------------------------------------- alignment


def align(fsrc: FeatureSource, esrc: EmbeddingSource) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Row indices into the features and into the embeddings for the images both have."""
    if fsrc.ok is not None and esrc.ok is not None:
        rows = np.flatnonzero(fsrc.ok & esrc.ok)
        return rows, rows, [fsrc.ids[i] for i in rows] if fsrc.ids else None
    nf, ne = fsrc.features.shape[0], esrc.embeddings.shape[0]
    if fsrc.ids is not None and esrc.ids is not None:
        pos = {k: i for i, k in enumerate(esrc.ids)}
        missing = [k for k in fsrc.ids if k not in pos]
        if missing:
            raise DataError(
                f"backbone {fsrc.name} and target {esrc.name} disagree on image_ids: {len(missing)} of the "
                f"backbone's images have no embedding (e.g. {', '.join(missing[:3])})"
            )
        frows = np.arange(nf) if fsrc.ok is None else np.flatnonzero(fsrc.ok)
        erows = np.array([pos[fsrc.ids[i]] for i in frows], dtype=np.int64)
        if esrc.ok is not None:
            keep = esrc.ok[erows]
            frows, erows = frows[keep], erows[keep]
        return frows, erows, [fsrc.ids[i] for i in frows]
    if nf != ne:
        raise DataError(
            f"backbone {fsrc.name} has {nf} feature rows but target {esrc.name} has {ne} embeddings; rows must "
            "align (give both files image_ids to align them by id)"
        )
    rows = np.arange(nf)
    ids = fsrc.ids or esrc.ids
    return rows, rows, ids


def check_finite(values: np.ndarray, what: str, ids: list[str] | None) -> None:
    for rows in row_chunks(values.shape[0]):
        bad = ~np.isfinite(np.asarray(values[rows])).all(axis=1)
        if bad.any():
            i = rows.start + int(np.flatnonzero(bad)[0])
            which = ids[i] if ids else f"row {i}"
            raise DataError(f"{what} has NaN or Inf values (first at image {which}); the model or file is broken")


# --------------------------------------------------------------------------- translators


@dataclass(frozen=True)
class FitSettings:
    """How an audit cross-fits: ``folds`` folds drawn with ``seed``; fitted states are
    saved under ``cache_root`` (the output folder's cache)."""

    folds: int
    seed: int
    cache_root: Path


def _state_path(root: Path, key: str, k: int) -> Path:
    return root / "translators" / key / f"fold{k}.safetensors"


def cross_fit(settings: FitSettings, comp, factory, features: np.ndarray, embeddings: np.ndarray, labels: np.ndarray,
              key_parts: dict):
    """Fit one translator per fold on the other folds; reuse saved ones when nothing changed.

    Every translator of an audit (the primary and the compared ones) uses the same folds.
    ``factory``: the translator family's registered factory (``options -> Translator``).
    """
    from safetensors.numpy import load_file, save

    n_folds = settings.folds
    folds = cross_fit_folds(labels, features.shape[0], n_folds, settings.seed)
    key = content_key("translator", key_parts, comp.plugin, comp.options.model_dump(mode="json") if comp.options else None, n_folds, settings.seed)
    translators = []
    root = settings.cache_root
    together = None
    if not all(_state_path(root, key, k).is_file() for k in range(n_folds)):
        # every fold at once where the family shares work between folds (e.g. ridge sums)
        together = factory(comp.options).fit_folds(features, np.asarray(embeddings, dtype=np.float64), folds, labels)
    for k in progress(range(n_folds), desc=f"translator {comp.name}", unit="fold"):
        train = folds != k
        t = together[k] if together is not None else factory(comp.options)
        path = _state_path(root, key, k)
        loaded = False
        if path.is_file():
            try:
                t.load_state(load_file(str(path)))
                loaded = True
            except Exception:  # noqa: BLE001 - a corrupt or stale file is refitted
                log.warning("translator state %s unreadable; refitting", path)
        if not loaded:
            if together is None:
                # the training rows in their stored dtype (translators convert to float64 as they read;
                # the linear one a row chunk at a time): no float64 copy of the features
                t.fit(np.asarray(features[train]), np.asarray(embeddings[train], dtype=np.float64), labels[train])
            state = t.state()
            if state:
                meta = {"key": key, "fold": str(k), "plugin": comp.plugin, "info": json.dumps(t.info(), default=str)}
                atomic_write_bytes(path, save({n: np.ascontiguousarray(v) for n, v in state.items()}, metadata=meta))
        translators.append(t)
    return folds, translators


def translate_by_fold(translators: list, folds: np.ndarray, dim: int, changed: np.ndarray, rows) -> np.ndarray:
    """``T(changed)`` (k×``dim``) for the changed features of the images ``rows``, each
    through the translator of its fold (``folds[rows]``): the one that did not see it."""
    fold_rows = folds[rows]
    out = np.empty((changed.shape[0], dim))
    for k in np.unique(fold_rows):
        sel = fold_rows == k
        out[sel] = translators[k].predict(changed[sel])
    return out


@dataclass
class CrossFitted:
    """One translator family cross-fitted on a model's features."""

    folds: np.ndarray
    translators: list
    translated: np.ndarray  # N×n held-out T(f)
    fidelity: dict[str, float]
    null_energy: float | None
    params: dict[str, list]
    normalized: bool
    linear: bool

    def translate(self, changed: np.ndarray, rows) -> np.ndarray:
        return translate_by_fold(self.translators, self.folds, self.translated.shape[1], changed, rows)


def fit_family(settings: FitSettings, comp, factory, feats, emb, labels, key_parts, sub: HeadSubspaces,
               target_name: str) -> CrossFitted:
    folds, translators = cross_fit(settings, comp, factory, feats, emb, labels, key_parts)
    translated = np.empty((feats.shape[0], emb.shape[1]))
    for chunk in row_chunks(feats.shape[0]):  # held-out T(f), a row chunk at a time
        f = np.asarray(feats[chunk])
        fold_rows = folds[chunk]
        part = translated[chunk]
        for k in np.unique(fold_rows):
            sel = fold_rows == k
            out = translators[k].predict(f[sel])
            if out.ndim != 2 or out.shape[1] != emb.shape[1]:
                raise DataError(
                    f"translator {comp.plugin} outputs {out.shape[-1]} dimensions but target {target_name} has {emb.shape[1]}"
                )
            part[sel] = out
    normalized = bool(getattr(translators[0], "normalized_targets", False))
    fid = fidelity_figures(translated, unit_rows(emb) if normalized else emb)
    maps = [t.linear_map() for t in translators]
    t_null = None
    if all(m is not None for m in maps):
        ratios = []
        for a, _ in maps:
            total = np.linalg.norm(a)
            ratios.append(float(np.linalg.norm(a @ sub.null) / total) if total > 0 else 0.0)
        t_null = float(np.mean(ratios))
    params: dict[str, list] = {}
    for t in translators:
        for p, v in t.info().items():
            params.setdefault(p, []).append(v)
    linear = all(m is not None for m in maps)
    return CrossFitted(folds, translators, translated, fid, t_null, params, normalized, linear)


def compare_family(settings: FitSettings, comp, factory, feats, emb, labels, key_parts, sub, target_name,
                   text) -> TranslatorComparison:
    """Fidelity and null-removal scores of another translator family on the same folds."""
    fam = fit_family(settings, comp, factory, feats, emb, labels, key_parts, sub, target_name)
    is_parts, as_parts = [], []
    for rows in row_chunks(feats.shape[0]):
        if sub.null_dim == 0:
            removed_t = fam.translated[rows]
        else:
            removed_t = fam.translate(remove_null(feats[rows], sub), rows)
        is_parts.append(image_scores(fam.translated[rows], removed_t))
        as_parts.append(attribute_scores_toward(fam.translated[rows], removed_t, text, labels[rows]))
    is_all, as_all = np.concatenate(is_parts), np.concatenate(as_parts)
    return TranslatorComparison(
        translator=comp.plugin,
        linear=fam.linear,
        params=fam.params,
        null_energy=fam.null_energy,
        is_mean=float(np.mean(is_all)),
        as_abs_mean=float(np.mean(np.abs(as_all))),
        **fam.fidelity,
    )
