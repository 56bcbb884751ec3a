"""The ``jacobian`` probe: the input Jacobian's spectrum and directional Lipschitz constants."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from sing_audit import input_space as S
from sing_audit.components import PluginOptions
from sing_audit.probes import Probe, ProbeContext, ProbeOutput, ProbeSummary
from sing_audit.builtins.input_probes.common import per_image_column, finite_or_none, context_inputs


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
            top_over_random=finite_or_none(lip["top"][0] / lip["random"][0]) if lip["random"][0] > 0 else None,
        )
        return res, summary

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        model, rows, x, _, _ = context_inputs(ctx, "jacobian", self.options.max_images)
        res, summary = self.run_on(model, x)
        n = int(ctx.features.shape[0])
        return ProbeOutput(
            per_image={
                "sigma_max": per_image_column(n, rows, [s.singular_values[0] for s in res.spectra]),
                "lipschitz_top": per_image_column(n, rows, res.lipschitz["top"][:, 0]),
                "lipschitz_random": per_image_column(n, rows, res.lipschitz["random"][:, 0]),
            },
            summary=summary,
        )
