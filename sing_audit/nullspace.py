"""Principal and null subspaces of a linear head, and null removal.

Pure functions on float64 arrays: no I/O, no config. Shapes: ``W`` is c×m (classes ×
features), features ``F`` are N×m (one row per image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "HeadSubspaces",
    "split_head",
    "null_component",
    "remove_null",
    "null_energy",
    "logit_drift",
    "drift_from",
]

RankRule = Literal["rank", "energy", "fixed", "fraction"]


@dataclass(frozen=True)
class HeadSubspaces:
    """``V = [V_p V_n]`` from the SVD ``W = U Σ Vᵀ`` split by a rank rule.

    ``principal`` is m×r, ``null`` is m×(m−r), both with orthonormal columns;
    ``singular_values`` are all min(c, m) of them, descending. ``tolerance`` is the
    singular-value cut of the ``rank`` rule (``None`` for the others); ``cut`` says how it
    was set (``None``: the default relative cut; ``"rtol 1e-06"`` or ``"atol 1e-05"``: a
    cut the config chose). ``exact`` is whether ``W Π_n = 0`` up to the weights' storage
    precision: the ``rank`` rule whose dropped singular values are all at or below the
    noise floor ``max(c, m)·weight_eps·σ_max`` (always so for the default cut; a larger
    ``rtol`` or an absolute ``atol`` may drop real directions, and then it is not exact).
    """

    principal: np.ndarray
    null: np.ndarray
    singular_values: np.ndarray
    rule: str
    rank: int
    tolerance: float | None
    exact: bool = False
    cut: str | None = None

    @property
    def num_features(self) -> int:
        return int(self.principal.shape[0])

    @property
    def null_dim(self) -> int:
        return int(self.null.shape[1])

    @property
    def label(self) -> str:
        """The rule as results show it: ``rank``, ``rank (atol 1e-05)``, ``energy``…"""
        return f"{self.rule} ({self.cut})" if self.cut else self.rule

    def projector_null(self) -> np.ndarray:
        """``Π_n = V_n V_nᵀ`` (m×m)."""
        return self.null @ self.null.T

    def projector_principal(self) -> np.ndarray:
        """``Π_p = V_p V_pᵀ`` (m×m)."""
        return self.principal @ self.principal.T


def split_head(
    weight: np.ndarray,
    rule: RankRule = "rank",
    *,
    rtol: float | None = None,
    atol: float | None = None,
    weight_eps: float = float(np.finfo(np.float32).eps),
    keep: float | None = None,
    rank: int | None = None,
    null_fraction: float | None = None,
) -> HeadSubspaces:
    """Split feature space into the head's principal and null subspaces.

    :param weight: c×m head weight.
    :param rule: ``rank`` — numerical rank, singular values above ``rtol·σ_max`` count
        (default ``rtol = max(c, m)·weight_eps``, numpy's ``matrix_rank`` convention with
        the precision the weights were stored in), or, with ``atol``, singular values above
        the absolute ``atol`` (the SING authors keep ``σ > 1e-5``; no relative term is
        added). ``rtol`` and ``atol`` together are refused, as numpy's ``matrix_rank``
        refuses ``tol`` with ``rtol`` (scipy's ``pinv`` instead cuts at ``atol + rtol·σ_max``:
        the combination has no single convention); ``energy`` — the smallest rank whose
        singular values keep a fraction ``keep`` of ``Σσ²``; ``fixed`` — ``rank`` given;
        ``fraction`` — the null space is the ``round(null_fraction·m)`` directions of least
        singular value (the same share of dimensions for every model; directions beyond
        ``min(c, m)`` have singular value 0 and come in the SVD's order).
    :returns: :class:`HeadSubspaces`; the SVD runs in float64.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2 or min(w.shape) == 0:
        raise ValueError(f"head weight must be a non-empty 2-D array, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("head weight contains NaN or Inf")
    c, m = w.shape
    _, s, vt = np.linalg.svd(w, full_matrices=True)
    tol: float | None = None
    exact, cut = False, None
    if rule != "rank" and atol is not None:
        raise ValueError(f"atol applies to rule 'rank' only, not {rule!r}")
    if rule == "rank":
        smax = float(s[0]) if s.size else 0.0
        if rtol is not None and rtol < 0:
            raise ValueError(f"rtol must be >= 0, got {rtol}")
        if atol is not None and not atol >= 0:
            raise ValueError(f"atol must be >= 0, got {atol}")
        if rtol is not None and atol is not None:
            raise ValueError("rank rule takes rtol or atol, not both (as numpy's matrix_rank takes tol or rtol)")
        noise = max(c, m) * weight_eps * smax
        if atol is not None:
            tol, cut = float(atol), f"atol {atol:g}"
        else:
            tol = (rtol if rtol is not None else max(c, m) * weight_eps) * smax
            cut = f"rtol {rtol:g}" if rtol is not None else None
        r = int(np.count_nonzero(s > tol))
        # exact: no singular value above the storage-noise floor was dropped
        exact = bool(r >= s.size or s[r] <= noise)
    elif rule == "energy":
        if keep is None or not 0.0 < keep <= 1.0:
            raise ValueError(f"energy rule needs 0 < keep <= 1, got {keep}")
        energy = np.cumsum(s**2)
        total = energy[-1]
        r = int(np.searchsorted(energy, keep * total * (1 - 1e-12)) + 1) if total > 0 else 0
        r = min(r, s.size)
    elif rule == "fraction":
        if null_fraction is None or not 0.0 <= null_fraction < 1.0:
            raise ValueError(f"fraction rule needs 0 <= null_fraction < 1, got {null_fraction}")
        r = m - int(round(null_fraction * m))
    elif rule == "fixed":
        if rank is None or not 0 <= rank <= min(c, m):
            raise ValueError(f"fixed rule needs 0 <= rank <= min(c, m) = {min(c, m)}, got {rank}")
        r = int(rank)
    else:
        raise ValueError(f"unknown rank rule {rule!r}; choose rank, energy, fixed or fraction")
    v = vt.T
    return HeadSubspaces(
        principal=np.ascontiguousarray(v[:, :r]),
        null=np.ascontiguousarray(v[:, r:]),
        singular_values=s,
        rule=rule,
        rank=r,
        tolerance=tol,
        exact=exact,
        cut=cut,
    )


def null_component(features: np.ndarray, sub: HeadSubspaces) -> np.ndarray:
    """``Π_n f`` for every row of N×m ``features`` (through the smaller subspace)."""
    f = np.asarray(features, dtype=np.float64)
    if f.shape[-1] != sub.num_features:
        raise ValueError(f"features have {f.shape[-1]} dimensions, the head expects {sub.num_features}")
    if sub.null_dim <= sub.rank:
        return (f @ sub.null) @ sub.null.T
    return f - (f @ sub.principal) @ sub.principal.T


def remove_null(features: np.ndarray, sub: HeadSubspaces) -> np.ndarray:
    """Null removal ``f̃ = f − Π_n f`` (N×m)."""
    f = np.asarray(features, dtype=np.float64)
    return f - null_component(f, sub)


def null_energy(features: np.ndarray, sub: HeadSubspaces) -> np.ndarray:
    """Per-row ``‖Π_n f‖ / ‖f‖`` (0 for a zero feature). N."""
    f = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(f, axis=-1)
    if f.shape[-1] != sub.num_features:
        raise ValueError(f"features have {f.shape[-1]} dimensions, the head expects {sub.num_features}")
    if sub.null_dim <= 2 * sub.rank:
        # ‖Π_n f‖ = ‖V_nᵀ f‖ (orthonormal columns): one N·m·(m−r) product instead of the two
        # N·m·min(r, m−r) ones of null_component, and no cancellation when Π_n f is small
        nulls = np.linalg.norm(f @ sub.null, axis=-1)
    else:
        nulls = np.linalg.norm(f - (f @ sub.principal) @ sub.principal.T, axis=-1)
    return np.divide(nulls, norms, out=np.zeros_like(norms), where=norms > 0)


@dataclass(frozen=True)
class LogitDrift:
    """How much null removal moved the logits.

    ``relative`` is per image ``‖W f − W f̃‖ / ‖W f + b‖`` (N); ``agreement`` is whether
    the predicted class stayed the same (N bool).
    """

    relative: np.ndarray
    agreement: np.ndarray


def logit_drift(weight: np.ndarray, bias: np.ndarray, features: np.ndarray, changed: np.ndarray) -> LogitDrift:
    """Compare logits of ``features`` and ``changed`` features (both N×m) under ``W, b``."""
    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64)
    f = np.asarray(features, dtype=np.float64)
    g = np.asarray(changed, dtype=np.float64)
    return drift_from(f @ w.T + b, (f - g) @ w.T)


def drift_from(before: np.ndarray, delta: np.ndarray) -> LogitDrift:
    """:class:`LogitDrift` from the logits ``before`` (N×c, with bias) and the change
    ``delta = W f − W f̃`` (N×c), however they were computed."""
    scale = np.linalg.norm(before, axis=-1)
    rel = np.divide(np.linalg.norm(delta, axis=-1), scale, out=np.zeros_like(scale), where=scale > 0)
    return LogitDrift(relative=rel, agreement=np.argmax(before, -1) == np.argmax(before - delta, -1))
