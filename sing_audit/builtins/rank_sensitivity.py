"""The ``rank_sensitivity`` probe: IS and |AS| as the rank threshold moves.

The exact rank rule decides how big a model's null space is, and architectures differ
wildly (ViT-B has none, ResNet-50 has 1048 dimensions). This probe recomputes null removal
under a grid of approximate rules — by kept singular-value energy (``rule: energy``) or by
the share of feature dimensions treated as null (``rule: fraction``) — with the audit's own
cross-fitted translator, so models can be compared at a matched null fraction and the
reader sees how sensitive the numbers are to the threshold.

Summary::

    {"rule": "energy" | "fraction",
     "points": [{"value", "rank", "null_dim", "null_energy", "is_mean", "as_abs_mean",
                 "logit_drift_mean", "prediction_agreement"}, ...]}
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from sing_audit.components import PluginOptions
from sing_audit.hookspecs import hookimpl
from sing_audit.nullspace import logit_drift, null_energy, remove_null, split_head
from sing_audit.probes import Probe, ProbeContext, ProbeOutput, ProbeSummary, row_chunks
from sing_audit.scores import attribute_scores_toward, image_scores

DEFAULTS = {
    "energy": [0.9, 0.99, 0.999, 0.9999, 0.99999],
    "fraction": [0.05, 0.1, 0.25, 0.5, 0.75],
}


class SensitivityPoint(BaseModel):
    """The audit's numbers under one approximate rule value."""

    value: float | None = None
    rank: int | None = None
    null_dim: int | None = None
    null_energy: float | None = None
    is_mean: float | None = None
    as_abs_mean: float | None = None
    logit_drift_mean: float | None = None
    prediction_agreement: float | None = None


class RankSensitivitySummary(ProbeSummary):
    """IS, |AS| and the logit drift under each value of the approximate rule (``points``)."""

    probe = "rank_sensitivity"

    rule: str | None = None
    points: list[SensitivityPoint] = Field(default_factory=list)


class RankSensitivity(Probe):
    """Null removal under a grid of energy or null-fraction thresholds."""

    Summary = RankSensitivitySummary

    class Options(PluginOptions):
        rule: Literal["energy", "fraction"] = "energy"
        values: list[float] | None = Field(default=None, description="thresholds (keep for energy, null_fraction)")

        @field_validator("values")
        @classmethod
        def _range(cls, v):
            if v is not None and (not v or any(not 0 <= x <= 1 for x in v)):
                raise ValueError("values must be a non-empty list of numbers in [0, 1]")
            return v

    def __init__(self, options: "RankSensitivity.Options | None" = None):
        self.options = options or self.Options()

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        o = self.options
        values = o.values or DEFAULTS[o.rule]
        points = []
        w, b = ctx.head.weight, ctx.head.bias
        for value in values:
            if o.rule == "energy":
                sub = split_head(w, "energy", keep=max(value, 1e-12))
            else:
                sub = split_head(w, "fraction", null_fraction=min(value, 1 - 1e-12))
            n = ctx.features.shape[0]
            is_, as_, drift, agree, energy = (np.empty(n) for _ in range(5))
            for rows in row_chunks(n):
                f = np.asarray(ctx.features[rows], dtype=np.float64)
                removed = remove_null(f, sub)
                t_r = ctx.translated[rows] if sub.null_dim == 0 else ctx.translate(removed, rows)
                is_[rows] = image_scores(ctx.translated[rows], t_r)
                as_[rows] = attribute_scores_toward(ctx.translated[rows], t_r, ctx.class_text, ctx.labels[rows])
                d = logit_drift(w, b, f, removed)
                drift[rows], agree[rows] = d.relative, d.agreement
                energy[rows] = null_energy(f, sub)
            points.append(
                SensitivityPoint(
                    value=float(value),
                    rank=sub.rank,
                    null_dim=sub.null_dim,
                    null_energy=float(energy.mean()),
                    is_mean=float(is_.mean()),
                    as_abs_mean=float(np.abs(as_).mean()),
                    logit_drift_mean=float(drift.mean()),
                    prediction_agreement=float(agree.mean()),
                )
            )
        return ProbeOutput(summary=RankSensitivitySummary(rule=o.rule, points=points))


@hookimpl
def register_probes(register):
    register("rank_sensitivity", RankSensitivity)
