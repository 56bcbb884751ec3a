"""The translator networks: the MLPs of the SING authors' reference code, built in torch.

- ``3layer``: Linear → LayerNorm → GELU → Dropout, twice, then Linear;
- ``4layer``: the same block three times, then Linear;
- ``residual``: an input projection, one residual block
  ``h + Linear(Dropout(GELU(LayerNorm(h))))``, then LayerNorm → GELU → Dropout → Linear.

The module layout (``layers.<i>.*`` for the plain MLPs; ``input_proj``/``residual``/
``output_proj`` for the residual one) is the one the reference code saves, so a
checkpoint of theirs loads into :func:`build_network`'s module. Used by the ``mlp3``,
``mlp4`` and ``residual_mlp`` translators (which train them) and by ``sing_reference``
(which loads published ones); torch is imported on first use.
"""

from __future__ import annotations

import contextlib
import functools

__all__ = [
    "ARCHITECTURES",
    "SMALL_NETWORK",
    "CachedTorchForward",
    "build_network",
    "standardised_module",
    "torch_threads",
]

#: architecture name (the SING authors' spelling) -> code stored in a translator's state
ARCHITECTURES: dict[str, int] = {"3layer": 3, "4layer": 4, "residual": 5}

#: networks with fewer parameters run on one CPU thread unless told otherwise: thread
#: start-up costs more than it saves
SMALL_NETWORK = 200_000


@functools.cache
def _network_classes():
    """The torch module classes, defined on first use so importing the plugin stays light."""
    import torch
    from torch import nn

    class PlainMLP(nn.Module):
        """``depth`` linear layers; LayerNorm, GELU and dropout between them."""

        def __init__(
            self, in_dim: int, hidden_dim: int, out_dim: int, depth: int, dropout: float
        ) -> None:
            super().__init__()
            mods: list[nn.Module] = []
            width = in_dim
            for _ in range(depth - 1):
                mods += [
                    nn.Linear(width, hidden_dim),
                    nn.LayerNorm(hidden_dim),
                    nn.GELU(),
                    nn.Dropout(dropout),
                ]
                width = hidden_dim
            mods.append(nn.Linear(width, out_dim))
            self.layers = nn.Sequential(*mods)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    class ResidualMLP(nn.Module):
        """Input projection, one pre-norm residual block, normalised output projection."""

        def __init__(
            self, in_dim: int, hidden_dim: int, out_dim: int, dropout: float
        ) -> None:
            super().__init__()
            self.input_proj = nn.Linear(in_dim, hidden_dim)
            self.residual = nn.Sequential(
                nn.LayerNorm(hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, hidden_dim),
            )
            self.output_proj = nn.Sequential(
                nn.LayerNorm(hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, out_dim),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.input_proj(x)
            h = h + self.residual(h)
            return self.output_proj(h)

    class Standardised(nn.Module):
        """``T(f) = net((f − μ_f) / σ_f) · s_z + μ_z`` as one differentiable module."""

        def __init__(
            self, net: nn.Module, in_mean, in_scale, out_mean, out_scale
        ) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("in_mean", torch.as_tensor(in_mean))
            self.register_buffer("in_scale", torch.as_tensor(in_scale))
            self.register_buffer("out_mean", torch.as_tensor(out_mean))
            self.register_buffer("out_scale", torch.as_tensor(out_scale))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (
                self.net((x - self.in_mean) / self.in_scale) * self.out_scale
                + self.out_mean
            )

    return PlainMLP, ResidualMLP, Standardised


def build_network(
    architecture: str, in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.1
):
    """A fresh ``torch.nn.Module`` of ``architecture`` (``3layer``, ``4layer`` or ``residual``).

    Parameters are initialised from the global torch RNG; callers that need determinism
    wrap the call in ``torch.random.fork_rng`` and seed it.
    """
    plain, residual, _ = _network_classes()
    if architecture == "3layer":
        return plain(in_dim, hidden_dim, out_dim, 3, dropout)
    if architecture == "4layer":
        return plain(in_dim, hidden_dim, out_dim, 4, dropout)
    if architecture == "residual":
        return residual(in_dim, hidden_dim, out_dim, dropout)
    raise ValueError(
        f"unknown translator architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}"
    )


def standardised_module(net, in_mean, in_scale, out_mean, out_scale):
    """Wrap ``net`` with input standardisation and output de-standardisation."""
    _, _, wrapper = _network_classes()
    return wrapper(net, in_mean, in_scale, out_mean, out_scale)


@contextlib.contextmanager
def torch_threads(want: int | None):
    """Run torch on ``want`` CPU threads inside the block, then restore (``None``: unchanged)."""
    import torch

    before = torch.get_num_threads()
    if want is None or want == before:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class CachedTorchForward:
    """Mixin for a translator with ``torch_module(dtype)``: ``torch_forward`` evaluates it in
    float64, rebuilding the cached module when ``_torch_source()`` (the fitted parameters)
    changes."""

    def torch_forward(self, x):
        """Differentiable ``T`` on a torch tensor (float64): ``predict`` for autograd (steering)."""
        import torch

        cache = getattr(self, "_torch_cache", None)
        if cache is None or cache[0] is not self._torch_source():
            cache = (self._torch_source(), self.torch_module(torch.float64))
            self._torch_cache = cache
        return cache[1](x.to(torch.float64))
