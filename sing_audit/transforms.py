"""Image transforms shared by model plugins: PIL image -> normalised C×H×W tensor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["INTERPOLATIONS", "resize_crop_transform"]

#: the interpolation names a plugin's options may offer
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def resize_crop_transform(
    resize: int,
    crop: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bilinear",
) -> Callable[[Any], Any]:
    """The usual evaluation transform: resize the short side to ``resize``, centre-crop
    ``crop``, to a float tensor in [0, 1], normalise with ``mean`` and ``std``."""
    from torchvision import transforms as T

    modes = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
             "nearest": T.InterpolationMode.NEAREST}
    if interpolation not in modes:
        raise ValueError(f"interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
    return T.Compose([
        T.Resize(resize, interpolation=modes[interpolation]),
        T.CenterCrop(crop),
        T.ToTensor(),
        T.Normalize(list(mean), list(std)),
    ])
