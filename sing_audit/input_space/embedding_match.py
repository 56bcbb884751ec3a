"""4. Embedding matching (Salman et al.): move an image by gradient descent until its
features match another image's, pixels kept in range."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .jacobian import feature_fn
from .pixels import valid_range

__all__ = ["EmbeddingMatchResult", "match_embeddings"]


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
