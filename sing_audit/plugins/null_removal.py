"""The ``null_removal`` probe: IS, AS and AS contrast of ``f̃ = f − Π_n f``."""

from __future__ import annotations

import numpy as np

from sing_audit.components import PluginOptions
from sing_audit.hookspecs import hookimpl
from sing_audit.nullspace import logit_drift, remove_null
from sing_audit.probes import Probe, ProbeContext, ProbeOutput, Scores, row_chunks
from sing_audit.scores import attribute_contrast, attribute_scores, image_scores


class NullRemoval(Probe):
    """Remove each feature's null component and measure the drift in the target space."""

    class Options(PluginOptions):
        pass

    def __init__(self, options: "NullRemoval.Options | None" = None):
        self.options = options or self.Options()

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        n = ctx.features.shape[0]
        is_ = np.empty(n)
        as_own = np.empty(n)
        contrast = np.empty(n)
        drift = np.empty(n)
        agree = np.empty(n, dtype=bool)
        for rows in row_chunks(n):
            f = np.asarray(ctx.features[rows], dtype=np.float64)
            removed = remove_null(f, ctx.subspaces)
            t_f = ctx.translated[rows]
            # with no null space f̃ = f exactly: reuse T(f) rather than re-evaluate it
            t_r = t_f if ctx.subspaces.null_dim == 0 else ctx.translate(removed, rows)
            is_[rows] = image_scores(t_f, t_r)
            as_all = attribute_scores(t_f, t_r, ctx.class_text)
            labels = ctx.labels[rows]
            as_own[rows] = as_all[np.arange(len(labels)), labels]
            contrast[rows] = attribute_contrast(as_all, labels)
            d = logit_drift(ctx.head.weight, ctx.head.bias, f, removed)
            drift[rows] = d.relative
            agree[rows] = d.agreement
        summary = {
            "logit_drift_relative_max": float(drift.max()) if n else None,
            "logit_drift_relative_mean": float(drift.mean()) if n else None,
            "prediction_agreement": float(agree.mean()) if n else None,
        }
        return ProbeOutput(
            per_image={"is": is_, "as": as_own, "as_contrast": contrast, "logit_drift": drift},
            summary=summary,
            scores=Scores(image_score=is_, attribute_score=as_own, attribute_contrast=contrast),
        )


@hookimpl
def register_probes(register):
    register("null_removal", NullRemoval)
