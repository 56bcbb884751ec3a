"""The ``encoder_null`` probe: a learned noise after the patch embedding that the logits ignore."""

from __future__ import annotations

from pydantic import Field

from sing_audit import input_space as S
from sing_audit.components import PluginOptions
from sing_audit.errors import ConfigError
from sing_audit.probes import Probe, ProbeContext, ProbeOutput, ProbeSummary
from sing_audit.builtins.input_probes.common import finite_or_none, context_inputs


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
            norm=res.norm, relative_norm=finite_or_none(res.relative_norm), tolerance=o.tolerance, per_token=o.per_token,
            n_fit=n - n_hold, n_heldout=n_hold, fit_drift=res.fit_drift, fit_agreement=res.fit_agreement,
            heldout_drift=res.heldout_drift, heldout_agreement=res.heldout_agreement,
            control_drift=res.control_drift, control_agreement=res.control_agreement, rounds=res.rounds,
        )
        return res, summary

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        model, _, x, _, _ = context_inputs(ctx, "encoder_null", self.options.max_images)
        _, summary = self.run_on(model, x)
        return ProbeOutput(summary=summary)
