"""What the input-space probes share: their inputs from the context, small statistics, PNG
renderings, and the semantics of equivalent images under the target's image encoder."""

from __future__ import annotations

import base64
import io

import numpy as np
from pydantic import BaseModel, Field

from sing_audit import input_space as S
from sing_audit.components import ImageTarget
from sing_audit.errors import ConfigError, SingAuditError
from sing_audit.probes import ProbeContext


def context_inputs(ctx: ProbeContext, probe: str, max_images: int):
    """``(model, rows, images, mean, std)`` from the context's ``backbone`` and ``images``.

    Rows: ``max_images`` spread evenly over the audit's images (deterministic).
    Raises :class:`ConfigError` naming the missing extension.
    """
    backbone = getattr(ctx, "backbone", None)
    images = getattr(ctx, "images", None)
    missing = [n for n, v in (("backbone", backbone), ("images", images)) if v is None]
    if missing or getattr(backbone, "model", None) is None:
        what = ", ".join(f"ctx.{m}" for m in missing) or "ctx.backbone.model (the backbone is not loaded)"
        raise ConfigError(
            f"probe {probe!r} runs the backbone on images, but the probe context has no {what}: it needs "
            "ProbeContext.backbone (the loaded image backbone, with .model and .data_config()) and "
            "ProbeContext.images (rows -> preprocessed image tensor). Use an image backbone (e.g. timm) on an "
            f"image dataset, with a runner that provides them, or remove {probe!r} from probes"
        )
    n = int(ctx.features.shape[0])
    k = min(max_images, n)
    rows = np.unique(np.linspace(0, n - 1, k).round().astype(np.int64)) if k > 0 else np.zeros(0, np.int64)
    x = images(rows) if callable(images) else images[rows]
    import torch

    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    cfg = backbone.data_config() if hasattr(backbone, "data_config") else {}
    mean = tuple(float(v) for v in cfg.get("mean", (0.0, 0.0, 0.0)))
    std = tuple(float(v) for v in cfg.get("std", (1.0, 1.0, 1.0)))
    return backbone.model, rows, x, mean, std


def per_image_column(n: int, rows: np.ndarray, values) -> np.ndarray:
    out = np.full(n, np.nan)
    out[rows] = np.asarray(values, dtype=np.float64)
    return out


def png_base64(img: np.ndarray) -> str:
    """An H×W×C uint8 array as a ``data:image/png;base64,...`` URI (for a report to render)."""
    from PIL import Image

    buf = io.BytesIO()
    arr = img[..., 0] if img.shape[-1] == 1 else img
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def finite_or_none(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def stat_of(a) -> "Stat":
    a = np.asarray(a, dtype=np.float64)
    return Stat(mean=finite_or_none(a.mean()) if a.size else None, max=finite_or_none(a.max()) if a.size else None)


class Stat(BaseModel):
    mean: float | None
    max: float | None


def row_image_ids(ctx: ProbeContext, rows: np.ndarray) -> list[str]:
    ids = list(ctx.image_ids or [])
    return [ids[r] if r < len(ids) else str(int(r)) for r in rows]


# --------------------------------------------------------------------------- semantics of equivalent images


class EquivalentImageScore(BaseModel):
    """One original/equivalent pair scored by the target's image encoder (degrees)."""

    image_id: str
    label: int
    #: angle between the target's embeddings of the original and the equivalent image
    image_score: float
    #: angle(original, class prompt) − angle(equivalent, class prompt); > 0: closer to the prompt
    attribute_score: float
    #: embedding_match only: the same toward the class prompt of the image it was matched to
    attribute_score_other: float | None = None


class TargetSemantics(BaseModel):
    """IS/AS of equivalent images under the target's real image encoder (no translator).

    ``scored`` false: nothing was measured and ``reason`` says why (no target, a
    precomputed target without an image encoder, a target that cannot embed float pixels).
    Means are over the scored images; ``as_abs_mean`` is the mean of |AS|.
    """

    target: str | None
    scored: bool
    reason: str | None = None
    n_images: int = 0
    is_mean: float | None = None
    is_max: float | None = None
    as_mean: float | None = None
    as_abs_mean: float | None = None
    #: embedding_match only: mean AS toward the class prompt of the matched-to image
    as_other_mean: float | None = None
    images: list[EquivalentImageScore] = Field(default_factory=list)


def not_scored(target_name, reason: str):
    return TargetSemantics(target=target_name, scored=False, reason=reason), None, None


def score_equivalent_images(
    ctx,
    original,
    equivalent,
    mean,
    std,
    rows: np.ndarray,
    ids: list[str],
    *,
    other_rows: np.ndarray | None = None,
    batch: int = 16,
) -> tuple[TargetSemantics, np.ndarray | None, np.ndarray | None]:
    """Score original/equivalent pairs (normalised N×C×H×W, the backbone's input) with ``ctx.target``.

    Returns the typed summary and the per-image IS and AS (``None`` when not scored).
    Pixels handed to the target: ``x·std + mean`` in float64, neither clamped nor
    quantised. Prompts: ``ctx.class_text[ctx.labels[rows]]`` (and ``other_rows`` for the
    second prompt of embedding matching). Never raises for a target that cannot do it.
    """
    import torch

    target = getattr(ctx, "target", None)
    name = getattr(ctx, "target_name", None) or (type(target).__name__ if target is not None else None)
    if target is None:
        return not_scored(name, "no target in the probe context")
    if not isinstance(target, ImageTarget):
        return not_scored(name, f"target {name!r} has no image encoder (precomputed embeddings): equivalent images cannot be embedded")
    text = getattr(ctx, "class_text", None)
    labels = np.asarray(getattr(ctx, "labels", np.zeros(0)), dtype=np.int64)
    if text is None or np.asarray(text).ndim != 2:
        return not_scored(name, "the probe context has no class prompt embeddings (ctx.class_text)")
    text = np.asarray(text, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    index = labels[rows] if labels.size else np.full(rows.size, -1)
    if rows.size == 0 or index.min() < 0 or index.max() >= text.shape[0]:
        return not_scored(name, "image labels do not index the class prompts")
    other = labels[np.asarray(other_rows, dtype=np.int64)] if other_rows is not None else None
    x0 = S.to_pixels(as_numpy(original), mean, std)
    x1 = S.to_pixels(as_numpy(equivalent), mean, std)
    try:
        z0, z1 = [], []
        for s in range(0, x0.shape[0], batch):
            z0.append(as_numpy(target.encode_pixels(torch.as_tensor(x0[s:s + batch]))))
            z1.append(as_numpy(target.encode_pixels(torch.as_tensor(x1[s:s + batch]))))
    except (SingAuditError, RuntimeError, NotImplementedError, ValueError) as exc:
        return not_scored(name, f"target {name!r} could not embed the images: {exc}")
    z0, z1 = np.concatenate(z0), np.concatenate(z1)
    if z0.shape[1] != text.shape[1]:
        return not_scored(name, f"target image embeddings ({z0.shape[1]}) and class prompts ({text.shape[1]}) differ in width")
    is_, as_ = S.equivalent_image_scores(z0, z1, text, index)
    as_o = S.equivalent_image_scores(z0, z1, text, other)[1] if other is not None else None
    summary = TargetSemantics(
        target=name, scored=True, n_images=int(is_.size),
        is_mean=finite_or_none(is_.mean()), is_max=finite_or_none(is_.max()), as_mean=finite_or_none(as_.mean()), as_abs_mean=finite_or_none(np.abs(as_).mean()),
        as_other_mean=finite_or_none(as_o.mean()) if as_o is not None else None,
        images=[
            EquivalentImageScore(
                image_id=ids[i], label=int(index[i]), image_score=float(is_[i]), attribute_score=float(as_[i]),
                attribute_score_other=float(as_o[i]) if as_o is not None else None,
            )
            for i in range(is_.size)
        ],
    )
    return summary, is_, as_


def as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)
