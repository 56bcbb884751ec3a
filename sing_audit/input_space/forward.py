"""Running a torch model on numpy batches, and how much its output moved."""

from __future__ import annotations

import numpy as np

__all__ = ["output_drift"]


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
