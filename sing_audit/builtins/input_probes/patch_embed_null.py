"""The ``patch_embed_null`` probe: equivalent images from the exact null space of a ViT's
patch embedding."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from sing_audit import input_space as S
from sing_audit.components import PluginOptions
from sing_audit.errors import ConfigError
from sing_audit.probes import Probe, ProbeContext, ProbeOutput, ProbeSummary
from sing_audit.builtins.input_probes.common import (
    Stat,
    TargetSemantics,
    per_image_column,
    row_image_ids,
    stat_of,
    context_inputs,
    png_base64,
    score_equivalent_images,
)


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
    #: IS/AS of the equivalent images under the target's image encoder
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
            pixel_l2=stat_of(res.pixel_l2), pixel_linf=stat_of(res.pixel_linf),
            null_drift=stat_of(res.null_drift), null_agreement=float(res.null_agreement.mean()),
            control_drift=stat_of(res.control_drift), control_agreement=float(res.control_agreement.mean()),
            quantised_drift=stat_of(res.quantised_drift), quantised_agreement=float(res.quantised_agreement.mean()),
            original_quantised_drift=stat_of(res.original_quantised_drift),
            quantised_exact=float(np.mean(res.quantised_drift <= o.tolerance)) if res.quantised_drift.size else 0.0,
            exact=bool(np.all(res.null_drift <= o.tolerance)), tolerance=o.tolerance, examples=examples,
        )

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        model, rows, x, mean, std = context_inputs(ctx, "patch_embed_null", self.options.max_images)
        res, _ = self.run_on(model, x, mean, std)
        ids = row_image_ids(ctx, rows)
        summary = self.summarise(res, ids)
        n = int(ctx.features.shape[0])
        per_image = {
            "null_drift": per_image_column(n, rows, res.null_drift),
            "control_drift": per_image_column(n, rows, res.control_drift),
            "quantised_drift": per_image_column(n, rows, res.quantised_drift),
            "pixel_l2": per_image_column(n, rows, res.pixel_l2),
        }
        if self.options.target_semantics:
            sem, is_, as_ = score_equivalent_images(ctx, x, res.equivalent, mean, std, rows, ids)
            summary.target_semantics = sem
            if is_ is not None:
                per_image["target_is"] = per_image_column(n, rows, is_)
                per_image["target_as"] = per_image_column(n, rows, as_)
        return ProbeOutput(per_image=per_image, summary=summary)
