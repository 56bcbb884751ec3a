"""TinyNet: a small CNN whose classifier is a custom (but affine) module.

``TinyNet(variant, num_classes)``: a stem and stride-2 conv blocks (Conv-BatchNorm-ReLU),
global average pooling to an m-dimensional feature, then :class:`ScaledLinearHead`:
``logits = exp(logit_scale) · (W f) + b``. The head is affine in ``f``, but it is not an
``nn.Linear``, so a generic backbone cannot fold it: the plugin does
(:meth:`ScaledLinearHead.affine`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["VARIANTS", "ScaledLinearHead", "TinyNet"]

#: variant name -> channel widths of the conv blocks (the last one is the feature width m)
VARIANTS: dict[str, tuple[int, ...]] = {
    "tinynet_s": (8, 16, 32),
    "tinynet_m": (16, 32, 64),
}


class ScaledLinearHead(nn.Module):
    """``logits = exp(logit_scale) · f Wᵀ + b`` with a learned temperature (init 1/0.07, as CLIP)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        nn.init.normal_(self.weight, std=in_features**-0.5 / 10)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.exp() * F.linear(f, self.weight) + self.bias

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W', b)`` with ``forward(f) == f W'ᵀ + b``, in float64."""
        with torch.no_grad():
            scale = self.logit_scale.double().exp()
            return scale * self.weight.double(), self.bias.double().clone()


class TinyNet(nn.Module):
    """Stem + stride-2 Conv-BN-ReLU blocks + global average pooling + :class:`ScaledLinearHead`."""

    def __init__(self, variant: str = "tinynet_s", num_classes: int = 10) -> None:
        super().__init__()
        widths = VARIANTS[variant]
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.num_features = c_in
        self.head = ScaledLinearHead(c_in, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """B×3×H×W -> B×m: the pooled feature, exactly what :attr:`head` receives."""
        return self.blocks(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
