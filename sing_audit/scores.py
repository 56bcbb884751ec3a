"""Angles, Image Score (IS), Attribute Score (AS) and AS contrast, in degrees.

Pure float64 functions. ``T(f)`` and ``T(f̃)`` are N×n translated features; text
embeddings are K×n, or one prompt as a 1-D n-vector (its axis is then dropped from the
result: N×K becomes N). Nothing here normalises in float32: ``arccos`` near 0 needs float64.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "unit_rows",
    "angles",
    "angle_matrix",
    "image_scores",
    "attribute_scores",
    "attribute_scores_toward",
    "attribute_contrast",
]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit norm (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _stable_angle(xu: np.ndarray, yu: np.ndarray) -> np.ndarray:
    """``2·atan2(|x̂ − ŷ|, |x̂ + ŷ|)`` in radians for unit rows: the same angle as
    ``arccos(x̂·ŷ)`` but exact near 0° and 180°, where arccos of a rounded cosine is not
    (float64 arccos cannot resolve angles below ~1e-6°)."""
    return 2.0 * np.arctan2(np.linalg.norm(xu - yu, axis=-1), np.linalg.norm(xu + yu, axis=-1))


def angles(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise angle ``degrees(arccos(clip(x·y / (|x||y|), -1, 1)))``; N×n, N×n -> N.

    Rows broadcast: N×n with a 1-D n (one text vector) -> N; n, n -> a 0-d array.

    Computed in float64 through :func:`_stable_angle` so tiny angles stay exact.
    """
    xu, yu = np.broadcast_arrays(unit_rows(x), unit_rows(y))
    return np.degrees(_stable_angle(xu, yu))


#: cosines beyond this are recomputed with the stable formula
_NEAR_PARALLEL = 1.0 - 1e-6


def angle_matrix(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Angles between every row of N×n ``x`` and every row of K×n ``t``: N×K (degrees).

    A 1-D ``x`` (one feature, n) or ``t`` (one prompt, n) drops its axis, as ``matmul``
    does: N×n, n -> N; n, K×n -> K; n, n -> a 0-d array. ``arccos`` of the cosine matrix,
    with near-(anti)parallel pairs recomputed stably.
    """
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if x.ndim not in (1, 2) or t.ndim not in (1, 2):
        raise ValueError(f"angle_matrix takes 1-D or 2-D arrays, got shapes {x.shape} and {t.shape}")
    xu, tu = unit_rows(np.atleast_2d(x)), unit_rows(np.atleast_2d(t))
    if xu.shape[1] != tu.shape[1]:
        raise ValueError(f"features have {xu.shape[1]} dimensions, text embeddings {tu.shape[1]}")
    cos = xu @ tu.T
    out = np.arccos(np.clip(cos, -1.0, 1.0))
    rows, cols = np.nonzero(np.abs(cos) > _NEAR_PARALLEL)
    if rows.size:
        out[rows, cols] = _stable_angle(xu[rows], tu[cols])
    out = np.degrees(out)
    if t.ndim == 1:
        out = out[:, 0]
    return out[0] if x.ndim == 1 else out


def image_scores(translated: np.ndarray, translated_removed: np.ndarray) -> np.ndarray:
    """``IS = angle(T(f), T(f̃))`` per image: N."""
    return angles(translated, translated_removed)


def attribute_scores(translated: np.ndarray, translated_removed: np.ndarray, text: np.ndarray) -> np.ndarray:
    """``AS = angle(T(f), t) − angle(T(f̃), t)`` for every image and prompt: N×K.

    A single 1-D prompt ``text`` (n) gives N, as :func:`angle_matrix` does. Positive: the
    null-removed (equivalent) feature is closer to the prompt.
    """
    return angle_matrix(translated, text) - angle_matrix(translated_removed, text)


def attribute_scores_toward(
    translated: np.ndarray, translated_removed: np.ndarray, text: np.ndarray, index: np.ndarray | None = None
) -> np.ndarray:
    """AS of each image toward one prompt each: ``text[index[i]]`` for image i. N.

    A single 1-D prompt ``text`` (n) is every image's prompt; ``index`` may then be
    omitted (or must be all 0).
    """
    t = np.asarray(text, dtype=np.float64)
    if t.ndim == 1:
        t = t[None, :]
        if index is None:
            index = np.zeros(np.asarray(translated).shape[0], dtype=np.int64)
    if index is None:
        raise ValueError(f"index is needed to choose among {t.shape[0]} prompts")
    idx = np.asarray(index, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= t.shape[0]):
        raise ValueError(f"prompt index out of range: {t.shape[0]} prompt(s), index from {idx.min()} to {idx.max()}")
    t = t[idx]
    return angles(translated, t) - angles(translated_removed, t)


def attribute_contrast(as_matrix: np.ndarray, index: np.ndarray) -> np.ndarray:
    """AS toward each image's own prompt minus the median AS toward all other prompts.

    :param as_matrix: N×K attribute scores toward every class prompt.
    :param index: N prompt index of each image's own class.
    :returns: N; NaN where there is no other prompt (K = 1).
    """
    a = np.asarray(as_matrix, dtype=np.float64)
    idx = np.asarray(index, dtype=np.int64)
    rows = np.arange(a.shape[0])
    own = a[rows, idx]
    if a.shape[1] < 2:
        return np.full(a.shape[0], np.nan)
    if np.isnan(a).any():
        others = a.copy()
        others[rows, idx] = np.nan
        return own - np.nanmedian(others, axis=1)
    # the median of the other K−1 prompts without a per-row loop: the own entry becomes +inf
    # (sorted last), so the K−1 others are the smallest; partition finds their middle
    others = a.copy()
    others[rows, idx] = np.inf
    k = a.shape[1] - 1
    mid = [(k - 1) // 2, k // 2]
    part = np.partition(others, mid, axis=1)[:, mid]
    return own - np.mean(part, axis=1)
