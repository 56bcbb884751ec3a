"""Patches and pixels: a batch of normalised images as patches and back, and the mapping
between the normalised input and float or 8-bit pixels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "image_to_patches",
    "patches_to_image",
    "valid_range",
    "to_pixels",
    "from_pixels",
    "to_uint8",
]


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
