"""Input-space probes of vision transformers: the math, with no I/O and no config.

Four measurements, each a set of functions on a torch module and a batch of
*normalised* input images ``x`` (N×C×H×W, exactly what the model consumes: resized,
centre-cropped, ``(pixel − mean) / std``):

1. **Patch-embedding null space** (Liu et al. 2024, NS-ViT). A ViT's patch embedding is
   the linear map ``W`` (D × C·p·p) applied to every p×p patch, so any per-patch
   perturbation in ``null(W)`` leaves every token, hence the output, unchanged.
   :func:`patch_null_space` computes it exactly (float64 SVD, numpy's ``matrix_rank``
   tolerance through :func:`sing_audit.nullspace.split_head`), for the full matrix and for
   each colour channel alone; :func:`bounded_null_perturbation` builds a perturbation
   that keeps pixels in ``[0, 1]`` (greedy per-basis-vector scaling, see there);
   :func:`run_patch_null` checks logits against a norm-matched permutation of the same
   noise and against the 8-bit rendering of the equivalent image.
2. **Jacobian spectrum and local Lipschitz constants** (Salman et al. 2024):
   :func:`jacobian_matrix` (exact, batched vector–Jacobian products),
   :func:`randomized_jacobian_svd` (Halko–Martinsson–Tropp with JVPs and VJPs),
   :func:`directional_lipschitz`; :func:`run_jacobian` ties them together.
3. **Approximate encoder null space** (NS-ViT): :func:`optimise_encoder_noise` learns one
   noise tensor added to the patch-embedding output that moves logits little while its
   norm grows; compared with a norm-matched random control.
4. **Embedding matching** (Salman et al.): :func:`match_embeddings` moves x by gradient
   descent until its embedding matches a target image's, pixels kept in range.
5. **Semantics of equivalent images**: :func:`equivalent_image_scores` turns a
   vision-language target's embeddings of original and equivalent images into IS and AS
   (no translator: the target's own image encoder sees both images).

Where null spaces live: the patch embedding acts on normalised inputs, so perturbations
are built in normalised space and mapped to pixels through the per-channel ``std``
(:func:`to_pixels`). Clamping to ``[0, 1]`` and 8-bit quantisation break exactness; the
functions keep float arrays and report separately how much invariance survives
quantisation.

Angles and spectra are computed in float64; the Jacobian probes run a float64 copy of the
model so that finite differences at small ε are not rounding noise.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .nullspace import split_head
from .scores import angles

__all__ = [
    "PatchNullSpace",
    "patch_embedding",
    "patch_null_space",
    "channel_basis",
    "image_to_patches",
    "patches_to_image",
    "valid_range",
    "to_pixels",
    "from_pixels",
    "to_uint8",
    "bounded_null_perturbation",
    "output_drift",
    "PatchNullResult",
    "run_patch_null",
    "feature_fn",
    "logits_fn",
    "math_attention",
    "jacobian_matrix",
    "JacobianSpectrum",
    "jacobian_spectrum",
    "randomized_jacobian_svd",
    "directional_lipschitz",
    "JacobianResult",
    "run_jacobian",
    "EncoderNoiseResult",
    "add_after_patch_embed",
    "optimise_encoder_noise",
    "EmbeddingMatchResult",
    "match_embeddings",
    "equivalent_image_scores",
]


# =========================================================================== 1. patch-embedding null space


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


def image_to_patches(x: np.ndarray, p: int) -> np.ndarray:
    """N×C×H×W -> N × (H/p·W/p) × C·p² (row-major patches, channel-major patch vectors)."""
    n, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"image size {h}×{w} is not a multiple of the patch size {p}")
    t = x.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
    return t.reshape(n, (h // p) * (w // p), c * p * p)


def patches_to_image(patches: np.ndarray, p: int, c: int, h: int, w: int) -> np.ndarray:
    """Inverse of :func:`image_to_patches`."""
    n = patches.shape[0]
    t = patches.reshape(n, h // p, w // p, c, p, p).transpose(0, 3, 1, 4, 2, 5)
    return t.reshape(n, c, h, w)


def valid_range(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel bounds ``((0 − mean)/std, (1 − mean)/std)`` of normalised inputs for pixels in [0, 1]."""
    m = np.asarray(mean, dtype=np.float64)
    s = np.asarray(std, dtype=np.float64)
    return (0.0 - m) / s, (1.0 - m) / s


def to_pixels(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised N×C×H×W -> pixels in [0, 1] units (``x·std + mean``, float, not clamped)."""
    m = np.asarray(mean, dtype=np.float64)[:, None, None]
    s = np.asarray(std, dtype=np.float64)[:, None, None]
    return np.asarray(x, dtype=np.float64) * s + m


def from_pixels(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Pixels in [0, 1] units -> normalised (``(x − mean)/std``)."""
    m = np.asarray(mean, dtype=np.float64)[:, None, None]
    s = np.asarray(std, dtype=np.float64)[:, None, None]
    return (np.asarray(x, dtype=np.float64) - m) / s


def to_uint8(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised N×C×H×W -> N×H×W×C uint8 images a report can render (clamped, rounded)."""
    pix = np.clip(to_pixels(x, mean, std), 0.0, 1.0)
    return np.round(pix * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


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


def _as_tensor(x, like=None):
    import torch

    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if like is not None:
        t = t.to(dtype=like.dtype, device=like.device)
    return t


def output_drift(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row ``‖a − b‖ / ‖a‖`` (float64) and whether the argmax agrees."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = np.linalg.norm(a, axis=-1)
    rel = np.divide(np.linalg.norm(a - b, axis=-1), scale, out=np.zeros_like(scale), where=scale > 0)
    return rel, np.argmax(a, -1) == np.argmax(b, -1)


def _forward(model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    import torch

    param = next(model.parameters())
    outs = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            outs.append(model(_as_tensor(x[s:s + batch], param)).double().cpu().numpy())
    return np.concatenate(outs, axis=0)


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


# =========================================================================== 2. Jacobian spectrum, Lipschitz


def feature_fn(model) -> Callable:
    """``x -> pre-logit features`` of a timm model (``forward_head(..., pre_logits=True)``)."""

    def f(x):
        return model.forward_head(model.forward_features(x), pre_logits=True)

    return f


def logits_fn(model) -> Callable:
    """``x -> logits``."""
    return model


@contextlib.contextmanager
def math_attention(model) -> Iterator[None]:
    """Temporarily switch timm attention blocks from fused SDPA to the explicit formula
    (which supports forward-mode AD, needed for JVPs)."""
    changed = []
    for m in model.modules():
        if getattr(m, "fused_attn", False) is True:
            m.fused_attn = False
            changed.append(m)
    try:
        yield
    finally:
        for m in changed:
            m.fused_attn = True


def _vjp_rows(fn, x, cotangents):
    """``Jᵀu`` for each row u of K × D_out ``cotangents`` at the single input x (C×H×W): K × D_in.

    Batched: the model maps each sample independently (eval mode), so one backward pass
    through K copies of x gives K vector–Jacobian products.
    """
    import torch

    xs = x.detach().unsqueeze(0).expand(cotangents.shape[0], *x.shape).clone().requires_grad_(True)
    out = fn(xs).reshape(cotangents.shape[0], -1)
    (g,) = torch.autograd.grad(out, xs, grad_outputs=cotangents.to(out.dtype))
    return g.reshape(cotangents.shape[0], -1)


def _jvp_rows(fn, x, tangents):
    """``J v`` for each row v of K × D_in ``tangents``: K × D_out (forward-mode AD)."""
    import torch

    xs = x.detach().unsqueeze(0).expand(tangents.shape[0], *x.shape).clone()
    _, out = torch.func.jvp(fn, (xs,), (tangents.reshape(xs.shape).to(xs.dtype).contiguous(),))
    return out.reshape(tangents.shape[0], -1)


def jacobian_matrix(fn, x, *, chunk: int = 256) -> np.ndarray:
    """The exact Jacobian D_out × D_in of ``fn`` at one input x (C×H×W) by batched VJPs (float64)."""
    import torch

    with torch.no_grad():
        d_out = fn(x.unsqueeze(0)).reshape(-1).shape[0]
    eye = torch.eye(d_out, dtype=x.dtype, device=x.device)
    rows = [_vjp_rows(fn, x, eye[s:s + chunk]) for s in range(0, d_out, chunk)]
    return torch.cat(rows).double().cpu().numpy()


@dataclass(frozen=True)
class JacobianSpectrum:
    """Singular values (descending) of J = ∂f/∂x at one input; ``right`` holds the matching
    right singular vectors as columns (D_in × k). ``exact``: all min(D_out, D_in) values."""

    singular_values: np.ndarray
    right: np.ndarray
    exact: bool
    output_dim: int
    input_dim: int
    method: str


def randomized_jacobian_svd(fn, x, k: int, *, oversample: int = 10, power_iters: int = 2, seed: int = 0) -> JacobianSpectrum:
    """Top-k singular values of J by the randomized range finder (Halko et al. 2011, alg. 4.4).

    ``Y = (J Jᵀ)^q J Ω`` with JVPs and VJPs only, ``Q = orth(Y)``, ``B = Qᵀ J`` (k+p VJPs),
    SVD of B. Costs (2q + 2)(k + p) Jacobian products; J is never formed.
    """
    import torch

    with torch.no_grad():
        d_out = fn(x.unsqueeze(0)).reshape(-1).shape[0]
    d_in = x.numel()
    ell = min(k + oversample, d_out, d_in)
    g = torch.Generator().manual_seed(seed)
    omega = torch.randn(ell, d_in, generator=g, dtype=torch.float64).to(x.dtype)
    y = _jvp_rows(fn, x, omega).double()  # ell × d_out  (rows are J ω)
    q, _ = torch.linalg.qr(y.T)  # d_out × ell
    for _ in range(power_iters):
        z = _vjp_rows(fn, x, q.T.to(x.dtype)).double()  # ell × d_in (Jᵀ q)
        qz, _ = torch.linalg.qr(z.T)
        y = _jvp_rows(fn, x, qz.T.to(x.dtype)).double()
        q, _ = torch.linalg.qr(y.T)
    bt = _vjp_rows(fn, x, q.T.to(x.dtype)).double()  # ell × d_in = (Qᵀ J)
    _, s, vt = np.linalg.svd(bt.cpu().numpy(), full_matrices=False)
    k = min(k, s.size)
    return JacobianSpectrum(s[:k], vt[:k].T, False, int(d_out), int(d_in), "randomized")


def jacobian_spectrum(fn, x, *, method: str = "auto", k: int = 64, exact_max_outputs: int = 512, seed: int = 0) -> JacobianSpectrum:
    """Singular values of J at x: ``exact`` (full Jacobian by VJPs, then SVD), ``randomized``
    (top k), or ``auto`` (exact when the output has at most ``exact_max_outputs`` entries)."""
    import torch

    with torch.no_grad():
        d_out = fn(x.unsqueeze(0)).reshape(-1).shape[0]
    if method == "auto":
        method = "exact" if d_out <= exact_max_outputs else "randomized"
    if method == "exact":
        j = jacobian_matrix(fn, x)
        _, s, vt = np.linalg.svd(j, full_matrices=False)
        return JacobianSpectrum(s, vt.T, True, int(j.shape[0]), int(j.shape[1]), "exact")
    if method == "randomized":
        return randomized_jacobian_svd(fn, x, k, seed=seed)
    raise ValueError(f"method must be auto, exact or randomized, got {method!r}")


def directional_lipschitz(fn, x, directions: np.ndarray, eps: Sequence[float]) -> np.ndarray:
    """``‖f(x + ε d) − f(x)‖ / ε`` for each unit-normalised row d of K × D_in ``directions``
    and each ε: K × E (float64; run a float64 model for small ε)."""
    import torch

    d = np.asarray(directions, dtype=np.float64)
    norms = np.linalg.norm(d, axis=1, keepdims=True)
    d = np.divide(d, norms, out=np.zeros_like(d), where=norms > 0)
    param = x
    out = np.empty((d.shape[0], len(eps)))
    with torch.no_grad():
        f0 = fn(x.unsqueeze(0)).reshape(-1).double()
        dt = torch.as_tensor(d).to(param.dtype).reshape(d.shape[0], *x.shape)
        for j, e in enumerate(eps):
            fe = fn(x.unsqueeze(0) + e * dt).reshape(d.shape[0], -1).double()
            out[:, j] = (torch.linalg.norm(fe - f0, dim=1) / e).cpu().numpy()
    return out


@dataclass
class JacobianResult:
    """Per image: spectrum and directional Lipschitz constants (``lipschitz[kind]`` is N × E)."""

    output: str
    eps: list[float]
    spectra: list[JacobianSpectrum]
    numerical_rank: np.ndarray
    lipschitz: dict[str, np.ndarray] = field(default_factory=dict)


def _numerical_rank(s: np.ndarray, shape: tuple[int, int]) -> int:
    if s.size == 0 or s[0] == 0:
        return 0
    return int(np.count_nonzero(s > max(shape) * np.finfo(np.float64).eps * s[0] * 1e4))


def run_jacobian(
    model,
    images,
    *,
    output: str = "features",
    method: str = "auto",
    k: int = 64,
    eps: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0),
    n_random: int = 4,
    seed: int = 0,
    exact_max_outputs: int = 512,
    float64: bool = True,
) -> JacobianResult:
    """Jacobian spectrum and directional Lipschitz constants of ``output`` (``features`` or
    ``logits``) w.r.t. the normalised input, per image.

    Directions: ``random`` (mean over ``n_random`` Gaussian directions), ``top`` (the top
    right singular vector) and ``null`` (a random direction projected off the Jacobian's row
    space — exact method — or off the top-k right singular vectors — randomized method,
    then only approximately null). Numerical rank counts σ > 1e4·max(shape)·eps64·σ_max
    (the float64 model's Jacobian is accurate to roughly that level).
    """
    import torch

    if output not in ("features", "logits"):
        raise ValueError(f"output must be features or logits, got {output!r}")
    m = copy.deepcopy(model).eval()
    if float64:
        m = m.double()
    fn = feature_fn(m) if output == "features" else logits_fn(m)
    x_all = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    x_all = x_all.detach().to(next(m.parameters()).dtype)
    rng = np.random.default_rng(seed)
    spectra, ranks = [], []
    lip: dict[str, list[np.ndarray]] = {"random": [], "top": [], "null": []}
    with math_attention(m):
        for i in range(x_all.shape[0]):
            x = x_all[i]
            sp = jacobian_spectrum(fn, x, method=method, k=k, exact_max_outputs=exact_max_outputs, seed=seed + i)
            spectra.append(sp)
            ranks.append(_numerical_rank(sp.singular_values, (sp.output_dim, sp.input_dim)) if sp.exact else -1)
            d_in = sp.input_dim
            rand = rng.normal(size=(n_random, d_in))
            top = sp.right[:, :1].T
            v = rng.normal(size=d_in)
            basis = sp.right[:, : (ranks[-1] if sp.exact else sp.right.shape[1])]
            v = v - basis @ (basis.T @ v)
            dirs = np.concatenate([rand, top, v[None]], axis=0)
            vals = directional_lipschitz(fn, x, dirs, eps)
            lip["random"].append(vals[:n_random].mean(axis=0))
            lip["top"].append(vals[n_random])
            lip["null"].append(vals[n_random + 1])
    return JacobianResult(
        output=output, eps=[float(e) for e in eps], spectra=spectra, numerical_rank=np.asarray(ranks),
        lipschitz={k_: np.asarray(v_) for k_, v_ in lip.items()},
    )


# =========================================================================== 3. approximate encoder null space


@dataclass
class EncoderNoiseResult:
    """A universal noise added to the patch-embedding output (shape P × D, or D when shared
    by every token) and how logits react, on the images it was fitted on and held out."""

    noise: np.ndarray
    norm: float
    #: ‖noise‖ / mean ‖patch-embedding output‖ over the fitted images (scale-free)
    relative_norm: float
    fit_drift: float
    fit_agreement: float
    heldout_drift: float | None
    heldout_agreement: float | None
    control_drift: float
    control_agreement: float
    rounds: list[dict] = field(default_factory=list)


@contextlib.contextmanager
def add_after_patch_embed(model, noise_ref: list) -> Iterator[None]:
    """Add ``noise_ref[0]`` (a tensor or None; broadcast over the batch) to the output of
    ``model.patch_embed`` while active; the hook is removed on exit."""

    def hook(_module, _inp, out):
        n = noise_ref[0]
        return out if n is None else out + n

    handle = model.patch_embed.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _drift_agree(model, x, noise_ref, noise, base) -> tuple[float, float]:
    import torch

    noise_ref[0] = noise
    with torch.no_grad():
        out = model(x).double()
    noise_ref[0] = None
    rel = torch.linalg.norm(out - base, dim=1) / torch.linalg.norm(base, dim=1).clamp_min(1e-30)
    agree = (out.argmax(1) == base.argmax(1)).double()
    return float(rel.mean()), float(agree.mean())


def optimise_encoder_noise(
    model,
    images,
    *,
    tolerance: float = 0.05,
    per_token: bool = True,
    start_norm: float = 1.0,
    growth: float = 1.5,
    max_rounds: int = 12,
    steps: int = 20,
    lr: float = 0.1,
    holdout: float = 0.5,
    seed: int = 0,
) -> EncoderNoiseResult:
    """Grow a universal noise on the patch-embedding output while logits stay put.

    Norm-constrained search: the noise is ``v = r·u/‖u‖``. Each round runs ``steps`` Adam
    steps on u minimising the mean squared relative logit change at radius r, on the fit
    images; if the mean relative logit change ``‖Δz‖/‖z‖`` stays ≤ ``tolerance`` the
    radius is accepted and multiplied by ``growth``, else the search stops. The norm
    reached is the last accepted r (0 when even ``start_norm`` fails). The control is a
    Gaussian noise of the same norm. ``holdout`` of the images (when there are ≥ 2) are
    not used for fitting and measure how universal the noise is.
    """
    import torch

    model.eval()
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    param = next(model.parameters())
    x = x.detach().to(param.dtype)
    n = x.shape[0]
    n_hold = int(round(holdout * n)) if n >= 2 else 0
    n_hold = min(n_hold, n - 1)
    x_fit, x_hold = x[: n - n_hold], x[n - n_hold:]
    with torch.no_grad():
        emb = model.patch_embed(x_fit)
    shape = tuple(emb.shape[1:]) if per_token else (emb.shape[-1],)
    emb_norm = float(torch.linalg.norm(emb.reshape(emb.shape[0], -1), dim=1).mean())
    ref: list = [None]
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(shape, generator=g, dtype=param.dtype).requires_grad_(True)
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    accepted_u = None
    accepted_r = 0.0
    rounds: list[dict] = []
    try:
        with add_after_patch_embed(model, ref), torch.no_grad():
            base_fit = model(x_fit).double()
            base_hold = model(x_hold).double() if n_hold else None
        with add_after_patch_embed(model, ref):
            r = float(start_norm)
            opt = torch.optim.Adam([u], lr=lr)
            for _ in range(max_rounds):
                for _ in range(steps):
                    opt.zero_grad()
                    ref[0] = r * u / u.norm()
                    out = model(x_fit).double()
                    loss = ((out - base_fit).pow(2).sum(1) / base_fit.pow(2).sum(1).clamp_min(1e-30)).mean()
                    loss.backward()
                    opt.step()
                    ref[0] = None
                with torch.no_grad():
                    v = r * u / u.norm()
                drift, agree = _drift_agree(model, x_fit, ref, v, base_fit)
                rounds.append({"norm": r, "drift": drift, "agreement": agree})
                if drift > tolerance or not math.isfinite(drift):
                    break
                accepted_u, accepted_r = u.detach().clone(), r
                r *= growth
            v = (accepted_r * accepted_u / accepted_u.norm()) if accepted_u is not None else torch.zeros(shape, dtype=param.dtype)
            fit_drift, fit_agree = _drift_agree(model, x_fit, ref, v, base_fit)
            hold = _drift_agree(model, x_hold, ref, v, base_hold) if n_hold else (None, None)
            ctrl = torch.randn(shape, generator=g, dtype=param.dtype)
            ctrl = ctrl * (accepted_r / ctrl.norm()) if accepted_r > 0 else torch.zeros(shape, dtype=param.dtype)
            with torch.no_grad():
                base_all = model(x).double()
            c_drift, c_agree = _drift_agree(model, x, ref, ctrl, base_all)
    finally:
        for p, req in zip(model.parameters(), requires):
            p.requires_grad_(req)
    return EncoderNoiseResult(
        noise=v.detach().double().cpu().numpy(), norm=float(accepted_r),
        relative_norm=float(accepted_r / emb_norm) if emb_norm > 0 else float("nan"),
        fit_drift=fit_drift, fit_agreement=fit_agree, heldout_drift=hold[0], heldout_agreement=hold[1],
        control_drift=c_drift, control_agreement=c_agree, rounds=rounds,
    )


# =========================================================================== 4. embedding matching


@dataclass
class EmbeddingMatchResult:
    """Per pair (source i moved toward target i), arrays of length N.

    Pixel changes are in [0, 1] pixel units; ``psnr`` in dB (inf for no change). Distances
    are ``‖f(x') − f(t)‖ / ‖f(t)‖``; cosines between f(x') and f(t). Predictions are the
    classifier's argmax on the source, the target, and the matched image.
    """

    matched: np.ndarray
    pixel_l2: np.ndarray
    pixel_linf: np.ndarray
    psnr: np.ndarray
    distance_before: np.ndarray
    distance_after: np.ndarray
    cosine_before: np.ndarray
    cosine_after: np.ndarray
    steps: np.ndarray
    converged: np.ndarray
    pred_source: np.ndarray
    pred_target: np.ndarray
    pred_matched: np.ndarray


def match_embeddings(
    model,
    sources,
    targets,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    steps: int = 200,
    lr: float = 0.01,
    distance_tol: float = 0.05,
    cosine_tol: float = 0.99,
) -> EmbeddingMatchResult:
    """Move each source image so its features (pre-logits) match its target's.

    Adam on the normalised input, loss ``‖f(x') − f(t)‖² / ‖f(t)‖²``; after each step the
    input is projected onto the valid pixel box. An image stops (is frozen) once its
    relative distance ≤ ``distance_tol`` and its cosine ≥ ``cosine_tol``.
    """
    import torch

    model.eval()
    param = next(model.parameters())
    fn = feature_fn(model)
    src = (sources if isinstance(sources, torch.Tensor) else torch.as_tensor(np.asarray(sources))).detach().to(param.dtype)
    tgt = (targets if isinstance(targets, torch.Tensor) else torch.as_tensor(np.asarray(targets))).detach().to(param.dtype)
    lo_np, hi_np = valid_range(mean, std)
    lo = torch.as_tensor(lo_np, dtype=param.dtype)[None, :, None, None]
    hi = torch.as_tensor(hi_np, dtype=param.dtype)[None, :, None, None]
    lo, hi = torch.minimum(lo, src), torch.maximum(hi, src)
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    n = src.shape[0]
    try:
        with torch.no_grad():
            ft = fn(tgt).double()
            f0 = fn(src).double()
            pred_s = model(src).argmax(1)
            pred_t = model(tgt).argmax(1)

        def stats(f):
            dist = torch.linalg.norm(f - ft, dim=1) / torch.linalg.norm(ft, dim=1).clamp_min(1e-30)
            cos = torch.nn.functional.cosine_similarity(f, ft, dim=1)
            return dist, cos

        d0, c0 = stats(f0)
        x = src.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        done = (d0 <= distance_tol) & (c0 >= cosine_tol)
        used = torch.zeros(n, dtype=torch.long)
        for _ in range(steps):
            if bool(done.all()):
                break
            opt.zero_grad()
            f = fn(x).double()
            loss = ((f - ft).pow(2).sum(1) / ft.pow(2).sum(1).clamp_min(1e-30))
            loss.sum().backward()
            keep = x.detach().clone()
            opt.step()
            with torch.no_grad():
                x.copy_(torch.where(done[:, None, None, None], keep, torch.clamp(x, lo, hi)))
                used += (~done).long()
                d, c = stats(fn(x).double())
                done = done | ((d <= distance_tol) & (c >= cosine_tol))
        with torch.no_grad():
            d1, c1 = stats(fn(x).double())
            pred_m = model(x).argmax(1)
    finally:
        for p, req in zip(model.parameters(), requires):
            p.requires_grad_(req)
    xm = x.detach().double().cpu().numpy()
    s = np.asarray(std, dtype=np.float64)[None, :, None, None]
    dpix = ((xm - src.double().cpu().numpy()) * s).reshape(n, -1)
    mse = (dpix**2).mean(axis=1)
    psnr = np.where(mse > 0, 10 * np.log10(1.0 / np.where(mse > 0, mse, 1.0)), np.inf)
    return EmbeddingMatchResult(
        matched=xm, pixel_l2=np.linalg.norm(dpix, axis=1), pixel_linf=np.abs(dpix).max(axis=1), psnr=psnr,
        distance_before=d0.cpu().numpy(), distance_after=d1.cpu().numpy(),
        cosine_before=c0.cpu().numpy(), cosine_after=c1.cpu().numpy(), steps=used.cpu().numpy(),
        converged=done.cpu().numpy(), pred_source=pred_s.cpu().numpy(), pred_target=pred_t.cpu().numpy(),
        pred_matched=pred_m.cpu().numpy(),
    )


# =========================================================================== 5. semantics of equivalent images


def equivalent_image_scores(
    original: np.ndarray, equivalent: np.ndarray, text: np.ndarray, index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """IS and AS of equivalent images, measured with a target's *real* image encoder.

    The input-space counterpart of SING's feature-space scores: ``original`` and
    ``equivalent`` (N×n each) are the target's raw embeddings of an image and of its
    equivalent (an image the classifier cannot tell apart from it), ``text`` (K×n) the
    class prompt embeddings and ``index`` (N) the prompt of each image. No translator is
    involved. Returns ``IS = angle(z, z')`` and ``AS = angle(z, t) − angle(z', t)``
    (degrees, float64, stable near 0°; positive AS: the equivalent image is closer to the
    prompt). Identical embeddings give exactly 0 for both.
    """
    z = np.asarray(original, dtype=np.float64)
    ze = np.asarray(equivalent, dtype=np.float64)
    if z.shape != ze.shape or z.ndim != 2:
        raise ValueError(f"original and equivalent embeddings must both be N×n, got {z.shape} and {ze.shape}")
    t = np.asarray(text, dtype=np.float64)[np.asarray(index, dtype=np.int64)]
    if t.shape != z.shape:
        raise ValueError(f"prompt embeddings {t.shape} do not match image embeddings {z.shape}")
    return angles(z, ze), angles(z, t) - angles(ze, t)
