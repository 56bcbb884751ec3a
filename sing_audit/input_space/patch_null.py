"""1. The exact null space of a ViT's patch embedding, equivalent images built from it, and
the check that they keep the logits (Liu et al. 2024, NS-ViT)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..nullspace import split_head
from .forward import _forward, output_drift
from .pixels import from_pixels, image_to_patches, patches_to_image, to_uint8, valid_range

__all__ = [
    "patch_embedding",
    "PatchNullSpace",
    "patch_null_space",
    "channel_basis",
    "bounded_null_perturbation",
    "PatchNullResult",
    "run_patch_null",
]


def patch_embedding(model) -> tuple[np.ndarray, int]:
    """``(W, p)``: the patch-embedding weight as a float64 D × C × p × p array and the patch size.

    Works for timm ``VisionTransformer``-like models (``model.patch_embed.proj`` a Conv2d
    with kernel = stride = p, no padding). Raises ``ValueError`` otherwise.
    """
    import torch

    pe = getattr(model, "patch_embed", None)
    proj = getattr(pe, "proj", None)
    if not isinstance(proj, torch.nn.Conv2d):
        raise ValueError(
            f"{type(model).__name__} has no patch_embed.proj Conv2d: the patch-embedding null space needs a "
            "ViT-style patch embedding (a linear map on non-overlapping patches)"
        )
    kh, kw = proj.kernel_size
    if (kh, kw) != tuple(proj.stride) or kh != kw or any(proj.padding) or proj.groups != 1 or any(d != 1 for d in proj.dilation):
        raise ValueError(
            f"patch embedding of {type(model).__name__} is not a plain non-overlapping p×p projection "
            f"(kernel {proj.kernel_size}, stride {proj.stride}, padding {proj.padding})"
        )
    return proj.weight.detach().to("cpu", torch.float64).numpy().copy(), int(kh)


@dataclass(frozen=True)
class PatchNullSpace:
    """Null space of one patch embedding ``W`` (D × C·p·p).

    ``basis`` is C·p² × k (orthonormal columns, patch vectors flattened channel-major
    ``(c, i, j)`` as ``W.reshape(D, -1)`` reads them); ``channel_bases[c]`` is p² × k_c, the
    null space of ``W[:, c]`` alone (perturb only channel c). ``rank`` and ``tolerance`` are
    those of the full matrix. Bases not asked for are ``None`` (dimensions are always set).
    """

    basis: np.ndarray | None
    channel_bases: tuple[np.ndarray, ...] | None
    rank: int
    tolerance: float | None
    singular_values: np.ndarray
    patch_size: int
    channels: int
    embed_dim: int
    null_dim: int
    channel_null_dims: list[int]


def _rank(w: np.ndarray, rtol: float | None, weight_eps: float) -> tuple[int, float, np.ndarray]:
    s = np.linalg.svd(w, compute_uv=False)
    rel = rtol if rtol is not None else max(w.shape) * weight_eps
    tol = rel * (float(s[0]) if s.size else 0.0)
    return int(np.count_nonzero(s > tol)), tol, s


def patch_null_space(
    weight: np.ndarray,
    *,
    rtol: float | None = None,
    weight_eps: float = float(np.finfo(np.float32).eps),
    full_basis: bool = True,
    channel_bases: bool = True,
) -> PatchNullSpace:
    """Exact null space of a D × C × p × p patch-embedding weight, full and per channel.

    The rank rule is numpy's ``matrix_rank`` convention with the precision the weights
    were stored in (``σ > max(D, C·p²)·eps·σ_max``), the same as the head's ``rank`` rule
    (:func:`sing_audit.nullspace.split_head`). Bases need a full SVD (C·p² square: slow for
    p = 32); ``full_basis`` / ``channel_bases`` False compute only the dimensions.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise ValueError(f"patch-embedding weight must be D×C×p×p, got shape {w.shape}")
    d, c, p, _ = w.shape
    wf = w.reshape(d, c * p * p)
    if full_basis:
        full = split_head(wf, "rank", rtol=rtol, weight_eps=weight_eps)
        basis, rank, tol, s = full.null, full.rank, full.tolerance, full.singular_values
    else:
        basis = None
        rank, tol, s = _rank(wf, rtol, weight_eps)
    per_dims = [p * p - _rank(w[:, ch].reshape(d, p * p), rtol, weight_eps)[0] for ch in range(c)]
    per = (
        tuple(split_head(w[:, ch].reshape(d, p * p), "rank", rtol=rtol, weight_eps=weight_eps).null for ch in range(c))
        if channel_bases else None
    )
    return PatchNullSpace(
        basis=basis, channel_bases=per, rank=rank, tolerance=tol, singular_values=s, patch_size=p, channels=c,
        embed_dim=d, null_dim=c * p * p - rank, channel_null_dims=per_dims,
    )


def channel_basis(space: PatchNullSpace, channel: int) -> np.ndarray:
    """Channel ``channel``'s null basis embedded in full patch vectors (C·p² × k_c, zeros elsewhere)."""
    p2 = space.patch_size**2
    b = space.channel_bases[channel]
    out = np.zeros((space.channels * p2, b.shape[1]))
    out[channel * p2:(channel + 1) * p2] = b
    return out


def bounded_null_perturbation(
    x: np.ndarray,
    basis: np.ndarray,
    p: int,
    lo: np.ndarray,
    hi: np.ndarray,
    coefficients: np.ndarray,
) -> np.ndarray:
    """A perturbation δ in the per-patch null space with ``lo ≤ x + δ ≤ hi`` everywhere.

    **Greedy per-basis-vector scaling.** Each patch starts at δ = 0 (feasible). Basis
    vectors are taken in order; for vector v with wanted coefficient a, the feasible
    interval ``{t : lo ≤ x + δ + t·v ≤ hi}`` is computed exactly (it contains 0) and
    ``δ += clip(a, interval)·v``. δ stays a combination of null vectors (exactness is
    untouched) and never leaves the box; vectors late in the order get less room, so the
    wanted coefficients should come in random order or magnitude.

    :param x: normalised images N×C×H×W.
    :param basis: C·p² × k null basis (from :class:`PatchNullSpace` or :func:`channel_basis`).
    :param lo, hi: per-channel bounds (C each), e.g. from :func:`valid_range`; widened to
        include x where x itself lies outside them.
    :param coefficients: N × P × k wanted coefficients (P patches per image).
    :returns: δ, N×C×H×W float64.
    """
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    px = image_to_patches(x, p).reshape(-1, c * p * p)
    ch = np.repeat(np.arange(c), p * p)
    lo_v = np.minimum(np.asarray(lo, dtype=np.float64)[ch][None, :], px)
    hi_v = np.maximum(np.asarray(hi, dtype=np.float64)[ch][None, :], px)
    slack_lo = lo_v - px  # ≤ 0
    slack_hi = hi_v - px  # ≥ 0
    a = np.asarray(coefficients, dtype=np.float64).reshape(px.shape[0], basis.shape[1])
    delta = np.zeros_like(px)
    tiny = 1e-12
    for k in range(basis.shape[1]):
        v = basis[:, k]
        pos, neg = v > tiny, v < -tiny
        lo_r = slack_lo - delta
        hi_r = slack_hi - delta
        upper = np.full(px.shape[0], np.inf)
        lower = np.full(px.shape[0], -np.inf)
        if pos.any():
            upper = np.minimum(upper, (hi_r[:, pos] / v[pos]).min(axis=1))
            lower = np.maximum(lower, (lo_r[:, pos] / v[pos]).max(axis=1))
        if neg.any():
            upper = np.minimum(upper, (lo_r[:, neg] / v[neg]).min(axis=1))
            lower = np.maximum(lower, (hi_r[:, neg] / v[neg]).max(axis=1))
        t = np.clip(a[:, k], np.minimum(lower, 0.0), np.maximum(upper, 0.0))
        delta += t[:, None] * v[None, :]
    # rounding in the running sum can cross a bound by ~1e-16: keep the box exact
    delta = np.clip(px + delta, lo_v, hi_v) - px
    return patches_to_image(delta.reshape(n, -1, c * p * p), p, c, h, w)


@dataclass
class PatchNullResult:
    """What :func:`run_patch_null` measured on N images (arrays are per image, N)."""

    space: PatchNullSpace
    mode: str
    #: the perturbation in normalised units and the equivalent image x + δ (N×C×H×W float64)
    delta: np.ndarray
    equivalent: np.ndarray
    #: ‖δ‖ in pixel units ([0, 1] scale) and its max |·|
    pixel_l2: np.ndarray
    pixel_linf: np.ndarray
    #: relative logit change and argmax agreement: null perturbation, norm-matched permutation
    #: of the same noise (control), and the 8-bit rendering of the equivalent image
    null_drift: np.ndarray
    null_agreement: np.ndarray
    control_drift: np.ndarray
    control_agreement: np.ndarray
    quantised_drift: np.ndarray
    quantised_agreement: np.ndarray
    #: the original rendered to 8-bit (its own rounding drift, the baseline for quantised_drift)
    original_quantised_drift: np.ndarray
    equivalent_uint8: np.ndarray
    original_uint8: np.ndarray


def run_patch_null(
    model,
    images,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    mode: str = "full",
    channel: int = 0,
    strength: float = 1.0,
    seed: int = 0,
) -> PatchNullResult:
    """Equivalent images through the patch-embedding null space, and their checks.

    :param model: a ViT (timm) in eval mode; its logits are compared.
    :param images: N×C×H×W normalised inputs (tensor or array) at the model's resolution.
    :param mode: ``full`` (null space of the whole D × C·p² matrix) or ``channel``
        (perturb only colour channel ``channel``, within the null space of ``W[:, channel]``).
    :param strength: std of the wanted null coefficients, in normalised units; the greedy
        box scaling of :func:`bounded_null_perturbation` shrinks them as needed.
    """
    weight, p = patch_embedding(model)
    if mode not in ("full", "channel"):
        raise ValueError(f"mode must be 'full' or 'channel', got {mode!r}")
    space = patch_null_space(weight, full_basis=mode == "full", channel_bases=mode == "channel")
    if mode == "full":
        basis = space.basis
    elif mode == "channel":
        if not 0 <= channel < space.channels:
            raise ValueError(f"channel must be in [0, {space.channels}), got {channel}")
        basis = channel_basis(space, channel)
    else:
        raise ValueError(f"mode must be 'full' or 'channel', got {mode!r}")
    x = images.detach().cpu().double().numpy() if hasattr(images, "detach") else np.asarray(images, dtype=np.float64)
    n, c, h, w = x.shape
    lo, hi = valid_range(mean, std)
    rng = np.random.default_rng(seed)
    n_patches = (h // p) * (w // p)
    if basis.shape[1] == 0:
        delta = np.zeros_like(x)
    else:
        coefs = rng.normal(scale=strength, size=(n, n_patches, basis.shape[1]))
        delta = bounded_null_perturbation(x, basis, p, lo, hi, coefs)
    equivalent = x + delta
    # control: the same numbers, shuffled (same norm, same value distribution)
    control = np.stack([rng.permutation(d.ravel()).reshape(d.shape) for d in delta])
    base = _forward(model, x)
    null_drift, null_agree = output_drift(base, _forward(model, equivalent))
    ctrl_drift, ctrl_agree = output_drift(base, _forward(model, x + control))
    eq_u8 = to_uint8(equivalent, mean, std)
    orig_u8 = to_uint8(x, mean, std)
    q = from_pixels(eq_u8.transpose(0, 3, 1, 2) / 255.0, mean, std)
    q_drift, q_agree = output_drift(base, _forward(model, q))
    oq = from_pixels(orig_u8.transpose(0, 3, 1, 2) / 255.0, mean, std)
    oq_drift, _ = output_drift(base, _forward(model, oq))
    s = np.asarray(std, dtype=np.float64)[None, :, None, None]
    dpix = (delta * s).reshape(n, -1)
    return PatchNullResult(
        space=space, mode=mode, delta=delta, equivalent=equivalent,
        pixel_l2=np.linalg.norm(dpix, axis=1), pixel_linf=np.abs(dpix).max(axis=1) if dpix.size else np.zeros(n),
        null_drift=null_drift, null_agreement=null_agree, control_drift=ctrl_drift, control_agreement=ctrl_agree,
        quantised_drift=q_drift, quantised_agreement=q_agree, original_quantised_drift=oq_drift,
        equivalent_uint8=eq_u8, original_uint8=orig_u8,
    )
