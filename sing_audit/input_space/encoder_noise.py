"""3. The approximate null space of the encoder (NS-ViT): one learned noise added after the
patch embedding that moves the logits little while its norm grows."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = ["EncoderNoiseResult", "add_after_patch_embed", "optimise_encoder_noise"]


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
