"""The ``nullspace_validation`` probe: logit change of equal-norm perturbations.

Each feature is moved by the same norm ``r_i = scale · ‖f_i‖`` along a random direction
drawn inside the null space, inside the principal space, and in the whole feature space.
The relative logit change ``‖W δ‖ / ‖W f + b‖`` of each kind is reported (the SING
supplementary's Fig. 9): null ≈ 0 under the exact rank rule, the others clearly not.

Summary::

    {"scale": float, "null": float, "random": float, "principal": float,      # means
     "null_max": float, "random_max": float, "principal_max": float,
     "null_dim": int, "rule": str, "exact": bool, "passed": bool}

``passed`` is False when the null perturbation changes logits by more than ``tolerance``
when the null space is exact (an approximate one, e.g. an absolute cut that drops real
singular values, only reports). ``null`` is ``None`` when the
head has no null space.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from sing_audit.components import PluginOptions
from sing_audit.hookspecs import hookimpl
from sing_audit.probes import Probe, ProbeContext, ProbeOutput, ProbeSummary, row_chunks


def perturbation_logit_change(
    features: np.ndarray, weight: np.ndarray, bias: np.ndarray, basis: np.ndarray | None, scale: float, generator
) -> np.ndarray:
    """Relative logit change of a random perturbation of norm ``scale·‖f‖`` inside
    ``span(basis)`` (m×k orthonormal; ``None`` = the whole space). N."""
    f = np.asarray(features, dtype=np.float64)
    n, m = f.shape
    if basis is None:
        d = generator.standard_normal((n, m))
    else:
        d = generator.standard_normal((n, basis.shape[1])) @ basis.T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    d *= scale * np.linalg.norm(f, axis=1, keepdims=True)
    logits = f @ weight.T + bias
    return np.linalg.norm(d @ weight.T, axis=1) / np.linalg.norm(logits, axis=1)


class NullspaceValidationSummary(ProbeSummary):
    """Mean (and largest) relative logit change of equal-norm perturbations inside the null
    space, in a random direction and inside the principal space; ``passed``: the null moves
    stayed within the tolerance (checked only when the null space is exact: ``exact``). ``error``: set
    instead by a head that could not be checked."""

    probe = "nullspace_validation"

    scale: float | None = None
    null_dim: int | None = None
    rule: str | None = None
    exact: bool | None = None
    null: float | None = None
    null_max: float | None = None
    random: float | None = None
    random_max: float | None = None
    principal: float | None = None
    principal_max: float | None = None
    passed: bool | None = None
    error: str | None = None


class NullspaceValidation(Probe):
    """Check that null-space moves leave the logits alone while equal-norm others do not."""

    Summary = NullspaceValidationSummary

    class Options(PluginOptions):
        scale: float = Field(default=0.5, gt=0, description="perturbation norm relative to ‖f‖")
        tolerance: float = Field(default=1e-5, gt=0, description="largest relative logit change allowed for null moves")

    def __init__(self, options: "NullspaceValidation.Options | None" = None):
        self.options = options or self.Options()

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        sub = ctx.subspaces
        w, b = ctx.head.weight, ctx.head.bias
        n = ctx.features.shape[0]
        cols = {"null": np.full(n, np.nan), "random": np.empty(n), "principal": np.full(n, np.nan)}
        bases = {"null": sub.null if sub.null_dim else None, "random": None, "principal": sub.principal if sub.rank else None}
        for rows in row_chunks(n):
            f = np.asarray(ctx.features[rows], dtype=np.float64)
            for kind, basis in bases.items():
                if kind != "random" and basis is None:
                    continue
                cols[kind][rows] = perturbation_logit_change(f, w, b, basis, self.options.scale, ctx.generator)
        means: dict[str, float | None] = {}
        for kind, values in cols.items():
            finite = np.isfinite(values)
            means[kind] = float(values[finite].mean()) if finite.any() else None
            means[f"{kind}_max"] = float(values[finite].max()) if finite.any() else None
        null_max = means["null_max"]
        summary = NullspaceValidationSummary(
            scale=self.options.scale, null_dim=sub.null_dim, rule=sub.label, exact=sub.exact, **means,
            passed=bool(not sub.exact or null_max is None or null_max <= self.options.tolerance),
        )
        return ProbeOutput(per_image={f"logit_change_{k}": v for k, v in cols.items()}, summary=summary)


@hookimpl
def register_probes(register):
    register("nullspace_validation", NullspaceValidation)
