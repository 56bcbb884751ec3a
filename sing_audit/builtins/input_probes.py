"""Input-space probes (issue 7): patch-embedding null space, Jacobian spectrum, encoder
null space, embedding matching. The math is in :mod:`sing_audit.input_space`.

These probes need the backbone's torch model and the preprocessed images, which the
feature-level :class:`~sing_audit.probes.ProbeContext` does not carry yet. They read two
optional context attributes (the runner is to fill them; until then ``run`` raises
:class:`ConfigError`):

``ctx.backbone``
    the loaded :class:`~sing_audit.components.ImageBackbone` of this model (its ``.model``
    a torch module in eval mode on its device; ``.data_config()`` giving ``mean``/``std``
    of the normalisation), or ``None`` for feature-only backbones (precomputed).
``ctx.images``
    ``images(rows) -> torch.Tensor``: the preprocessed images (exactly what
    ``backbone.features`` consumes: resized, cropped, normalised; float, k×C×H×W) of the
    given row indices of ``ctx.features`` (a 1-D int array). A tensor/array of all images
    is accepted too, but the runner should pass the loader: probes read only a few rows.

Each probe also has an entry point on a model and a batch directly (``run_on``), used by
the tests and usable from Python without an audit.

**Semantics of equivalent images** (issue 7, item 5). ``patch_embed_null`` and
``embedding_match`` produce equivalent images (the classifier cannot tell them from the
original, or sees another image in them). When the audit's target is an
:class:`~sing_audit.components.ImageTarget`, they set ``needs_target`` (the runner loads
``ctx.target``) and score every original/equivalent pair with the target's own image
encoder through :meth:`~sing_audit.components.ImageTarget.encode_pixels`: both images are
mapped from the backbone's normalised input back to float pixels (``x·std + mean``, not
clamped, not rounded) and embedded; IS is the angle between the two embeddings and AS the
change of angle toward the image's class prompt (``ctx.class_text``), see
:func:`sing_audit.input_space.equivalent_image_scores`. The summary's
``target_semantics`` holds them; with a precomputed (embedding-only) target, or one that
cannot embed float pixels, it says why nothing was scored instead of failing.
``encoder_null`` is not scored: its noise lives after the patch embedding, so it has no
image the target could see.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from sing_audit import input_space as S
from sing_audit.components import ImageTarget, PluginOptions
from sing_audit.errors import ConfigError, SingAuditError
from sing_audit.hookspecs import hookimpl
from sing_audit.probes import Probe, ProbeContext, ProbeOutput, ProbeSummary

__all__ = [
    "PatchEmbedNullProbe",
    "JacobianProbe",
    "EncoderNullProbe",
    "EmbeddingMatchProbe",
    "context_inputs",
    "png_base64",
    "TargetSemantics",
    "EquivalentImageScore",
    "score_equivalent_images",
]


# --------------------------------------------------------------------------- shared plumbing


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


def _column(n: int, rows: np.ndarray, values) -> np.ndarray:
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


def _f(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _stats(a) -> "Stat":
    a = np.asarray(a, dtype=np.float64)
    return Stat(mean=_f(a.mean()) if a.size else None, max=_f(a.max()) if a.size else None)


class Stat(BaseModel):
    mean: float | None
    max: float | None


def _ids(ctx: ProbeContext, rows: np.ndarray) -> list[str]:
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


def _skip(target_name, reason: str):
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
        return _skip(name, "no target in the probe context")
    if not isinstance(target, ImageTarget):
        return _skip(name, f"target {name!r} has no image encoder (precomputed embeddings): equivalent images cannot be embedded")
    text = getattr(ctx, "class_text", None)
    labels = np.asarray(getattr(ctx, "labels", np.zeros(0)), dtype=np.int64)
    if text is None or np.asarray(text).ndim != 2:
        return _skip(name, "the probe context has no class prompt embeddings (ctx.class_text)")
    text = np.asarray(text, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    index = labels[rows] if labels.size else np.full(rows.size, -1)
    if rows.size == 0 or index.min() < 0 or index.max() >= text.shape[0]:
        return _skip(name, "image labels do not index the class prompts")
    other = labels[np.asarray(other_rows, dtype=np.int64)] if other_rows is not None else None
    x0 = S.to_pixels(_numpy(original), mean, std)
    x1 = S.to_pixels(_numpy(equivalent), mean, std)
    try:
        z0, z1 = [], []
        for s in range(0, x0.shape[0], batch):
            z0.append(_numpy(target.encode_pixels(torch.as_tensor(x0[s:s + batch]))))
            z1.append(_numpy(target.encode_pixels(torch.as_tensor(x1[s:s + batch]))))
    except (SingAuditError, RuntimeError, NotImplementedError, ValueError) as exc:
        return _skip(name, f"target {name!r} could not embed the images: {exc}")
    z0, z1 = np.concatenate(z0), np.concatenate(z1)
    if z0.shape[1] != text.shape[1]:
        return _skip(name, f"target image embeddings ({z0.shape[1]}) and class prompts ({text.shape[1]}) differ in width")
    is_, as_ = S.equivalent_image_scores(z0, z1, text, index)
    as_o = S.equivalent_image_scores(z0, z1, text, other)[1] if other is not None else None
    summary = TargetSemantics(
        target=name, scored=True, n_images=int(is_.size),
        is_mean=_f(is_.mean()), is_max=_f(is_.max()), as_mean=_f(as_.mean()), as_abs_mean=_f(np.abs(as_).mean()),
        as_other_mean=_f(as_o.mean()) if as_o is not None else None,
        images=[
            EquivalentImageScore(
                image_id=ids[i], label=int(index[i]), image_score=float(is_[i]), attribute_score=float(as_[i]),
                attribute_score_other=float(as_o[i]) if as_o is not None else None,
            )
            for i in range(is_.size)
        ],
    )
    return summary, is_, as_


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------- 1. patch-embedding null space


class EquivalentImage(BaseModel):
    image_id: str
    original_png: str
    equivalent_png: str
    #: |equivalent − original| scaled so its maximum is white
    difference_png: str


class PatchEmbedNullSummary(ProbeSummary):
    probe = "patch_embed_null"
    dump_mode = "json"
    omit_unset = False

    patch_size: int
    embed_dim: int
    patch_dim: int
    rank: int
    null_dim: int
    channel_null_dims: list[int]
    mode: str
    n_images: int
    pixel_l2: Stat
    pixel_linf: Stat
    null_drift: Stat
    null_agreement: float
    control_drift: Stat
    control_agreement: float
    quantised_drift: Stat
    quantised_agreement: float
    original_quantised_drift: Stat
    #: share of images whose 8-bit rendered equivalent still keeps the relative logit change ≤ tolerance
    quantised_exact: float
    #: null drift ≤ tolerance on every image (the exact check)
    exact: bool
    tolerance: float
    examples: list[EquivalentImage]
    #: IS/AS of the equivalent images under the target's image encoder (item 5)
    target_semantics: TargetSemantics | None = None


class PatchEmbedNullProbe(Probe):
    """Equivalent images from the exact null space of a ViT's patch embedding."""

    Summary = PatchEmbedNullSummary

    needs_backbone = True

    class Options(PluginOptions):
        mode: Literal["full", "channel"] = Field("full", description="full D×C·p² matrix, or one colour channel")
        channel: int = Field(0, ge=0, description="colour channel perturbed in mode: channel")
        strength: float = Field(1.0, gt=0, description="std of the wanted null coefficients (normalised units)")
        max_images: int = Field(16, ge=1, description="images probed (spread evenly over the data)")
        examples: int = Field(2, ge=0, description="equivalent images rendered into the summary")
        tolerance: float = Field(1e-5, gt=0, description="relative logit change allowed for the exactness check")
        seed: int = 0
        target_semantics: bool = Field(True, description="score equivalent images with the target's image encoder")

    def __init__(self, options: "PatchEmbedNullProbe.Options | None" = None):
        self.options = options or self.Options()
        self.needs_target = bool(self.options.target_semantics)

    def run_on(self, model, images, mean, std) -> tuple[S.PatchNullResult, PatchEmbedNullSummary]:
        o = self.options
        try:
            res = S.run_patch_null(model, images, mean, std, mode=o.mode, channel=o.channel, strength=o.strength, seed=o.seed)
        except ValueError as exc:
            raise ConfigError(f"probe 'patch_embed_null': {exc}") from exc
        return res, self.summarise(res, [str(i) for i in range(res.delta.shape[0])])

    def summarise(self, res: S.PatchNullResult, ids: list[str]) -> PatchEmbedNullSummary:
        o = self.options
        sp = res.space
        examples = []
        for i in range(min(o.examples, res.delta.shape[0])):
            diff = np.abs(res.equivalent_uint8[i].astype(np.int16) - res.original_uint8[i].astype(np.int16))
            scale = 255.0 / max(int(diff.max()), 1)
            examples.append(EquivalentImage(
                image_id=ids[i], original_png=png_base64(res.original_uint8[i]),
                equivalent_png=png_base64(res.equivalent_uint8[i]),
                difference_png=png_base64(np.clip(diff * scale, 0, 255).astype(np.uint8)),
            ))
        return PatchEmbedNullSummary(
            patch_size=sp.patch_size, embed_dim=sp.embed_dim, patch_dim=sp.channels * sp.patch_size**2, rank=sp.rank,
            null_dim=sp.null_dim, channel_null_dims=sp.channel_null_dims, mode=res.mode, n_images=int(res.delta.shape[0]),
            pixel_l2=_stats(res.pixel_l2), pixel_linf=_stats(res.pixel_linf),
            null_drift=_stats(res.null_drift), null_agreement=float(res.null_agreement.mean()),
            control_drift=_stats(res.control_drift), control_agreement=float(res.control_agreement.mean()),
            quantised_drift=_stats(res.quantised_drift), quantised_agreement=float(res.quantised_agreement.mean()),
            original_quantised_drift=_stats(res.original_quantised_drift),
            quantised_exact=float(np.mean(res.quantised_drift <= o.tolerance)) if res.quantised_drift.size else 0.0,
            exact=bool(np.all(res.null_drift <= o.tolerance)), tolerance=o.tolerance, examples=examples,
        )

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        model, rows, x, mean, std = context_inputs(ctx, "patch_embed_null", self.options.max_images)
        res, _ = self.run_on(model, x, mean, std)
        ids = _ids(ctx, rows)
        summary = self.summarise(res, ids)
        n = int(ctx.features.shape[0])
        per_image = {
            "null_drift": _column(n, rows, res.null_drift),
            "control_drift": _column(n, rows, res.control_drift),
            "quantised_drift": _column(n, rows, res.quantised_drift),
            "pixel_l2": _column(n, rows, res.pixel_l2),
        }
        if self.options.target_semantics:
            sem, is_, as_ = score_equivalent_images(ctx, x, res.equivalent, mean, std, rows, ids)
            summary.target_semantics = sem
            if is_ is not None:
                per_image["target_is"] = _column(n, rows, is_)
                per_image["target_as"] = _column(n, rows, as_)
        return ProbeOutput(per_image=per_image, summary=summary)


# --------------------------------------------------------------------------- 2. Jacobian spectrum


class JacobianSummary(ProbeSummary):
    probe = "jacobian"
    dump_mode = "json"
    omit_unset = False

    output: Literal["features", "logits"]
    method: str
    exact: bool
    n_images: int
    input_dim: int
    output_dim: int
    #: numerical rank per image (exact method only; else empty)
    numerical_rank: list[int]
    #: singular values averaged over images, descending (the top k for the randomized method)
    singular_values_mean: list[float]
    eps: list[float]
    #: mean over images of ‖f(x+εd) − f(x)‖/ε, one value per ε
    lipschitz_random: list[float]
    lipschitz_top: list[float]
    lipschitz_null: list[float]
    #: lipschitz_top / lipschitz_random at the smallest ε
    top_over_random: float | None


class JacobianProbe(Probe):
    """Singular values of ∂f/∂x and directional local Lipschitz constants."""

    Summary = JacobianSummary

    needs_backbone = True

    class Options(PluginOptions):
        output: Literal["features", "logits"] = "features"
        method: Literal["auto", "exact", "randomized"] = "auto"
        k: int = Field(64, ge=1, description="singular values kept by the randomized method")
        exact_max_outputs: int = Field(512, ge=1, description="auto: exact when the output has at most this many entries")
        eps: list[float] = Field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0], min_length=1)
        n_random: int = Field(4, ge=1, description="random directions averaged")
        max_images: int = Field(4, ge=1)
        float64: bool = Field(True, description="run a float64 copy of the model")
        seed: int = 0

    def __init__(self, options: "JacobianProbe.Options | None" = None):
        self.options = options or self.Options()

    def run_on(self, model, images) -> tuple[S.JacobianResult, JacobianSummary]:
        o = self.options
        res = S.run_jacobian(
            model, images, output=o.output, method=o.method, k=o.k, eps=o.eps, n_random=o.n_random, seed=o.seed,
            exact_max_outputs=o.exact_max_outputs, float64=o.float64,
        )
        k = min(len(s.singular_values) for s in res.spectra)
        sv = np.mean([s.singular_values[:k] for s in res.spectra], axis=0)
        lip = {key: res.lipschitz[key].mean(axis=0) for key in ("random", "top", "null")}
        first = res.spectra[0]
        summary = JacobianSummary(
            output=o.output, method=first.method, exact=first.exact, n_images=len(res.spectra),
            input_dim=first.input_dim, output_dim=first.output_dim,
            numerical_rank=[int(r) for r in res.numerical_rank] if first.exact else [],
            singular_values_mean=[float(v) for v in sv], eps=res.eps,
            lipschitz_random=[float(v) for v in lip["random"]], lipschitz_top=[float(v) for v in lip["top"]],
            lipschitz_null=[float(v) for v in lip["null"]],
            top_over_random=_f(lip["top"][0] / lip["random"][0]) if lip["random"][0] > 0 else None,
        )
        return res, summary

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        model, rows, x, _, _ = context_inputs(ctx, "jacobian", self.options.max_images)
        res, summary = self.run_on(model, x)
        n = int(ctx.features.shape[0])
        return ProbeOutput(
            per_image={
                "sigma_max": _column(n, rows, [s.singular_values[0] for s in res.spectra]),
                "lipschitz_top": _column(n, rows, res.lipschitz["top"][:, 0]),
                "lipschitz_random": _column(n, rows, res.lipschitz["random"][:, 0]),
            },
            summary=summary,
        )


# --------------------------------------------------------------------------- 3. encoder null space


class EncoderNullSummary(ProbeSummary):
    probe = "encoder_null"
    dump_mode = "json"
    omit_unset = False

    norm: float
    relative_norm: float | None
    tolerance: float
    per_token: bool
    n_fit: int
    n_heldout: int
    fit_drift: float
    fit_agreement: float
    heldout_drift: float | None
    heldout_agreement: float | None
    control_drift: float
    control_agreement: float
    rounds: list[dict[str, float]]


class EncoderNullProbe(Probe):
    """A universal noise on the patch-embedding output, as large as logits allow."""

    Summary = EncoderNullSummary

    needs_backbone = True

    class Options(PluginOptions):
        tolerance: float = Field(0.05, gt=0, description="mean relative logit change allowed")
        per_token: bool = Field(True, description="one noise per token position (P×D), else one D-vector for all")
        start_norm: float = Field(1.0, gt=0)
        growth: float = Field(1.5, gt=1)
        max_rounds: int = Field(12, ge=1)
        steps: int = Field(20, ge=1, description="Adam steps per radius")
        lr: float = Field(0.1, gt=0)
        holdout: float = Field(0.5, ge=0, lt=1, description="share of the probed images kept out of the fit")
        max_images: int = Field(32, ge=1)
        seed: int = 0

    def __init__(self, options: "EncoderNullProbe.Options | None" = None):
        self.options = options or self.Options()

    def run_on(self, model, images) -> tuple[S.EncoderNoiseResult, EncoderNullSummary]:
        o = self.options
        if getattr(model, "patch_embed", None) is None:
            raise ConfigError("probe 'encoder_null' needs a ViT-style model with a patch_embed module")
        res = S.optimise_encoder_noise(
            model, images, tolerance=o.tolerance, per_token=o.per_token, start_norm=o.start_norm, growth=o.growth,
            max_rounds=o.max_rounds, steps=o.steps, lr=o.lr, holdout=o.holdout, seed=o.seed,
        )
        n = int(images.shape[0])
        n_hold = min(int(round(o.holdout * n)), n - 1) if n >= 2 else 0
        summary = EncoderNullSummary(
            norm=res.norm, relative_norm=_f(res.relative_norm), tolerance=o.tolerance, per_token=o.per_token,
            n_fit=n - n_hold, n_heldout=n_hold, fit_drift=res.fit_drift, fit_agreement=res.fit_agreement,
            heldout_drift=res.heldout_drift, heldout_agreement=res.heldout_agreement,
            control_drift=res.control_drift, control_agreement=res.control_agreement, rounds=res.rounds,
        )
        return res, summary

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        model, _, x, _, _ = context_inputs(ctx, "encoder_null", self.options.max_images)
        _, summary = self.run_on(model, x)
        return ProbeOutput(summary=summary)


# --------------------------------------------------------------------------- 4. embedding matching


class EmbeddingMatchSummary(ProbeSummary):
    probe = "embedding_match"
    dump_mode = "json"
    omit_unset = False

    n_pairs: int
    converged: float
    pixel_l2: Stat
    pixel_linf: Stat
    psnr_mean: float | None
    distance_before: Stat
    distance_after: Stat
    cosine_after: Stat
    steps_mean: float
    #: share of matched images the classifier assigns the target's class / keeps the source's class
    takes_target_class: float
    keeps_source_class: float
    pairs: list[dict[str, Any]]
    #: IS/AS of matched images under the target's image encoder (item 5): AS toward the
    #: source's class prompt, ``as_other_mean`` toward the matched-to image's class prompt
    target_semantics: TargetSemantics | None = None


class EmbeddingMatchProbe(Probe):
    """Gradient descent on x until its embedding matches another image's."""

    Summary = EmbeddingMatchSummary

    needs_backbone = True

    class Options(PluginOptions):
        steps: int = Field(200, ge=1)
        lr: float = Field(0.01, gt=0, description="Adam step on the normalised input")
        distance_tol: float = Field(0.05, gt=0, description="stop when ‖f(x')−f(t)‖/‖f(t)‖ ≤ this ...")
        cosine_tol: float = Field(0.99, gt=-1, le=1, description="... and cos(f(x'), f(t)) ≥ this")
        max_pairs: int = Field(4, ge=1)
        target_semantics: bool = Field(True, description="score matched images with the target's image encoder")

    def __init__(self, options: "EmbeddingMatchProbe.Options | None" = None):
        self.options = options or self.Options()
        self.needs_target = bool(self.options.target_semantics)

    @staticmethod
    def pair_targets(labels: np.ndarray) -> np.ndarray:
        """For each image the index of the next image (cyclically) with another label, else the next image."""
        labels = np.asarray(labels)
        n = labels.size
        out = np.empty(n, dtype=np.int64)
        for i in range(n):
            out[i] = (i + 1) % n
            for s in range(1, n):
                j = (i + s) % n
                if labels[j] != labels[i]:
                    out[i] = j
                    break
        return out

    def run_on(self, model, sources, targets, mean, std, ids: list[str] | None = None):
        o = self.options
        res = S.match_embeddings(
            model, sources, targets, mean, std, steps=o.steps, lr=o.lr, distance_tol=o.distance_tol, cosine_tol=o.cosine_tol,
        )
        n = res.pixel_l2.size
        ids = ids or [str(i) for i in range(n)]
        finite = res.psnr[np.isfinite(res.psnr)]
        summary = EmbeddingMatchSummary(
            n_pairs=n, converged=float(res.converged.mean()) if n else 0.0,
            pixel_l2=_stats(res.pixel_l2), pixel_linf=_stats(res.pixel_linf),
            psnr_mean=_f(finite.mean()) if finite.size else None,
            distance_before=_stats(res.distance_before), distance_after=_stats(res.distance_after),
            cosine_after=_stats(res.cosine_after), steps_mean=float(res.steps.mean()) if n else 0.0,
            takes_target_class=float((res.pred_matched == res.pred_target).mean()) if n else 0.0,
            keeps_source_class=float((res.pred_matched == res.pred_source).mean()) if n else 0.0,
            pairs=[
                {
                    "source": ids[i], "target": ids[(i + 1) % n] if len(ids) == n else "",
                    "pixel_l2": float(res.pixel_l2[i]), "distance_after": float(res.distance_after[i]),
                    "cosine_after": float(res.cosine_after[i]), "converged": bool(res.converged[i]),
                    "pred_source": int(res.pred_source[i]), "pred_target": int(res.pred_target[i]),
                    "pred_matched": int(res.pred_matched[i]),
                }
                for i in range(n)
            ],
        )
        return res, summary

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        o = self.options
        model, rows, x, mean, std = context_inputs(ctx, "embedding_match", o.max_pairs)
        if x.shape[0] < 2:
            raise ConfigError("probe 'embedding_match' needs at least 2 images")
        tgt = self.pair_targets(np.asarray(ctx.labels)[rows])
        ids = _ids(ctx, rows)
        res, summary = self.run_on(model, x, x[tgt], mean, std)
        for i, pair in enumerate(summary.pairs):
            pair["source"], pair["target"] = ids[i], ids[int(tgt[i])]
        n = int(ctx.features.shape[0])
        per_image = {
            "pixel_l2": _column(n, rows, res.pixel_l2),
            "distance_after": _column(n, rows, res.distance_after),
        }
        if o.target_semantics:
            sem, is_, as_ = score_equivalent_images(ctx, x, res.matched, mean, std, rows, ids, other_rows=rows[tgt])
            summary.target_semantics = sem
            if is_ is not None:
                per_image["target_is"] = _column(n, rows, is_)
                per_image["target_as"] = _column(n, rows, as_)
        return ProbeOutput(per_image=per_image, summary=summary)


@hookimpl
def register_probes(register):
    register("patch_embed_null", PatchEmbedNullProbe)
    register("jacobian", JacobianProbe)
    register("encoder_null", EncoderNullProbe)
    register("embedding_match", EmbeddingMatchProbe)
