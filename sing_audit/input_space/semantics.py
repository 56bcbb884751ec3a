"""5. The semantics of equivalent images: IS and AS from a vision-language target's own
embeddings of the original and the equivalent images (no translator)."""

from __future__ import annotations

import numpy as np

from ..scores import angles

__all__ = ["equivalent_image_scores"]


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
