"""Concept-directed steering within the null space, in closed form for a linear translator.

For a prompt ``t`` (unit ``t̂``) and ``T(f) = A f + c``, write ``u = T(f)``. The steering
score is ``s(f) = cos(u, t̂)`` and its gradient ``g = Aᵀ(α t̂ + β u)`` with
``α = 1/‖u‖`` and ``β = −(u·t̂)/‖u‖³``. The step is ``d = Π_n g`` and
``f_ε = f + ε d/‖d‖``. With ``M = A Π_n Aᵀ`` (n×n) and ``w = α t̂ + β u``:

- ``‖d‖² = wᵀ M w``;
- ``T(f_ε) = u + (ε/‖d‖) M w``;
- logits change by ``W d``, with ``‖W d‖² = wᵀ P w`` and ``P = A Π_n Wᵀ W Π_n Aᵀ``.

So every quantity is a dot product of ``u``, ``t̂``, ``M u``, ``M t̂`` (and ``P``): the
work is O(N·K + (N + K)·n²) and no N × K × m (or N × K × n) tensor ever exists. Pure
float64 functions; a zero direction (``‖d‖ = 0``) is reported, never divided by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .nullspace import HeadSubspaces

__all__ = ["SteeringOperators", "steering_operators", "SteeringResult", "steer_linear", "steer_dense"]

#: ‖d‖ below this (relative to ‖A‖·‖w‖) counts as a zero direction
ZERO_DIRECTION = 1e-12


@dataclass(frozen=True)
class SteeringOperators:
    """``M = A Π_n Aᵀ`` and ``P = A Π_n Wᵀ W Π_n Aᵀ`` for one linear translator (n×n each)."""

    m: np.ndarray
    p: np.ndarray
    scale: float  # ‖A‖_F, for the zero-direction test


def steering_operators(coef: np.ndarray, sub: HeadSubspaces, weight: np.ndarray) -> SteeringOperators:
    """Build the operators from the translator ``coef`` (n×m), the subspaces and ``W`` (c×m)."""
    a = np.asarray(coef, dtype=np.float64)
    b = a @ sub.null  # n×k
    wv = np.asarray(weight, dtype=np.float64) @ sub.null  # c×k: zero under the exact rule
    bw = b @ wv.T  # n×c
    return SteeringOperators(m=b @ b.T, p=bw @ bw.T, scale=float(np.linalg.norm(a)))


@dataclass
class SteeringResult:
    """Per image and prompt (N×K): AS toward the prompt, IS, logit change, zero flags."""

    attribute_score: np.ndarray  # angle(T(f), t) − angle(T(f_ε), t): positive = moved toward t
    image_score: np.ndarray  # angle(T(f), T(f_ε))
    logit_change: np.ndarray  # ‖W (f_ε − f)‖ / ‖W f + b‖
    zero_direction: np.ndarray  # bool: no null direction raises the score


def _angle_from_cos(cos: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def steer_linear(
    translated: np.ndarray,
    prompts: np.ndarray,
    epsilon: np.ndarray,
    ops: SteeringOperators,
    logit_norm: np.ndarray,
    max_cells: int = 2_000_000,
) -> SteeringResult:
    """Steer every image toward every prompt by ``ε_i`` along ``Π_n ∇ s``.

    :param translated: N×n, ``u = T(f)`` for each image.
    :param prompts: K×n prompt embeddings (normalised here).
    :param epsilon: N step lengths in feature space.
    :param ops: :func:`steering_operators` of the translator that produced ``translated``.
    :param logit_norm: N, ``‖W f + b‖`` (for the relative logit change).
    :param max_cells: rows are processed in chunks of about this many image×prompt cells,
        so temporaries stay bounded whatever N, K and m are.
    """
    n_img, k = translated.shape[0], prompts.shape[0]
    step = max(1, max_cells // max(k, 1))
    parts = [
        _steer_block(translated[s : s + step], prompts, np.asarray(epsilon)[s : s + step], ops, np.asarray(logit_norm)[s : s + step])
        for s in range(0, n_img, step)
    ]
    return SteeringResult(*(np.concatenate([getattr(p, f) for p in parts]) for f in SteeringResult.__dataclass_fields__))


def _steer_block(
    translated: np.ndarray,
    prompts: np.ndarray,
    epsilon: np.ndarray,
    ops: SteeringOperators,
    logit_norm: np.ndarray,
) -> SteeringResult:
    u = np.asarray(translated, dtype=np.float64)
    t = np.asarray(prompts, dtype=np.float64)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    eps = np.asarray(epsilon, dtype=np.float64)[:, None]
    un = np.linalg.norm(u, axis=1)  # N
    ut = u @ t.T  # N×K
    mu, mt = u @ ops.m, t @ ops.m  # N×n, K×n (M symmetric)
    pu, pt = u @ ops.p, t @ ops.p
    alpha = (1.0 / un)[:, None]  # N×1
    beta = -ut / un[:, None] ** 3  # N×K
    tmt = np.einsum("kj,kj->k", mt, t)[None, :]  # t̂Mt̂ (1×K)
    umu = np.einsum("ij,ij->i", mu, u)[:, None]  # uMu (N×1)
    tmu = u @ mt.T  # uMt̂ (N×K)
    d2 = alpha**2 * tmt + 2 * alpha * beta * tmu + beta**2 * umu
    d2 = np.clip(d2, 0.0, None)
    wn2 = alpha**2 + 2 * alpha * beta * ut + beta**2 * un[:, None] ** 2  # ‖w‖²
    zero = np.sqrt(d2) <= ZERO_DIRECTION * max(ops.scale, 1e-300) * np.sqrt(np.clip(wn2, 0, None)) + 1e-300
    step = np.divide(eps, np.sqrt(d2), out=np.zeros_like(d2), where=~zero)  # ε/‖d‖
    # T(f_ε) = u + step·(α Mt̂ + β Mu)
    mw_t = alpha * tmt + beta * tmu  # (Mw)·t̂ = α t̂Mt̂ + β uMt̂
    new_t = ut + step * mw_t
    mtmt = np.einsum("kj,kj->k", mt, mt)[None, :]
    mumu = np.einsum("ij,ij->i", mu, mu)[:, None]
    mtmu = mu @ mt.T
    mw2 = alpha**2 * mtmt + 2 * alpha * beta * mtmu + beta**2 * mumu  # ‖Mw‖²
    u_mw = alpha * tmu + beta * umu  # u·Mw
    new_norm2 = np.clip(un[:, None] ** 2 + 2 * step * u_mw + step**2 * mw2, 1e-300, None)
    new_norm = np.sqrt(new_norm2)
    before = _angle_from_cos(ut / un[:, None])
    after = _angle_from_cos(new_t / new_norm)
    is_ = _angle_from_cos((un[:, None] ** 2 + step * u_mw) / (un[:, None] * new_norm))
    tpt = np.einsum("kj,kj->k", pt, t)[None, :]
    upu = np.einsum("ij,ij->i", pu, u)[:, None]
    tpu = u @ pt.T
    wpw = np.clip(alpha**2 * tpt + 2 * alpha * beta * tpu + beta**2 * upu, 0.0, None)
    logit = step * np.sqrt(wpw) / np.asarray(logit_norm, dtype=np.float64)[:, None]
    as_ = np.where(zero, np.nan, before - after)
    return SteeringResult(
        attribute_score=as_,
        image_score=np.where(zero, np.nan, is_),
        logit_change=np.where(zero, np.nan, logit),
        zero_direction=zero,
    )


def steer_dense(
    features: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray,
    prompts: np.ndarray,
    epsilon: np.ndarray,
    sub: HeadSubspaces,
    weight: np.ndarray,
    bias: np.ndarray,
) -> SteeringResult:
    """The same quantities computed directly (builds N×K×m): a reference for tests only."""
    f = np.asarray(features, dtype=np.float64)
    a = np.asarray(coef, dtype=np.float64)
    t = np.asarray(prompts, dtype=np.float64)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    pn = sub.null @ sub.null.T
    w = np.asarray(weight, dtype=np.float64)
    u = f @ a.T + intercept
    n_img, k = f.shape[0], t.shape[0]
    as_ = np.full((n_img, k), np.nan)
    is_ = np.full((n_img, k), np.nan)
    lc = np.full((n_img, k), np.nan)
    zero = np.zeros((n_img, k), dtype=bool)
    for i in range(n_img):
        un = np.linalg.norm(u[i])
        for j in range(k):
            grad_u = t[j] / un - (u[i] @ t[j]) * u[i] / un**3
            d = pn @ (a.T @ grad_u)
            dn = np.linalg.norm(d)
            if dn <= ZERO_DIRECTION * np.linalg.norm(a) * np.linalg.norm(grad_u) + 1e-300:
                zero[i, j] = True
                continue
            fe = f[i] + epsilon[i] * d / dn
            ue = a @ fe + intercept
            before = np.degrees(np.arccos(np.clip(u[i] @ t[j] / un, -1, 1)))
            after = np.degrees(np.arccos(np.clip(ue @ t[j] / np.linalg.norm(ue), -1, 1)))
            as_[i, j] = before - after
            is_[i, j] = np.degrees(np.arccos(np.clip(u[i] @ ue / (un * np.linalg.norm(ue)), -1, 1)))
            lc[i, j] = np.linalg.norm(w @ (fe - f[i])) / np.linalg.norm(w @ f[i] + bias)
    return SteeringResult(as_, is_, lc, zero)
