"""2. The input Jacobian's spectrum and directional Lipschitz constants (Salman et al. 2024):
exact or randomised (Halko–Martinsson–Tropp with JVPs and VJPs)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "feature_fn",
    "logits_fn",
    "math_attention",
    "jacobian_matrix",
    "JacobianSpectrum",
    "randomized_jacobian_svd",
    "jacobian_spectrum",
    "directional_lipschitz",
    "JacobianResult",
    "run_jacobian",
]


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
