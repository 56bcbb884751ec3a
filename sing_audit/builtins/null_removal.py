"""The ``null_removal`` probe: IS, AS and AS contrast of ``f̃ = f − Π_n f``.

It has the headline role: its scores are the audit's IS and AS."""

from __future__ import annotations

import numpy as np

from sing_audit.components import PluginOptions
from sing_audit.hookspecs import hookimpl
from sing_audit.nullspace import drift_from
from sing_audit.probes import HEADLINE, HeadlineSummary, Probe, ProbeContext, ProbeOutput, Scores, row_chunks
from sing_audit.scores import attribute_contrast, attribute_scores, image_scores


class NullRemovalSummary(HeadlineSummary):
    """How much removing each image's null component moved the logits (relative change)."""

    probe = "null_removal"


class NullRemoval(Probe):
    """Remove each feature's null component and measure the drift in the target space.

    Everything goes through the smaller of the two subspaces (basis ``B``, d columns):
    with ``p = f B``, the null part is ``p Bᵀ`` (B = V_n) or ``f − p Bᵀ`` (B = V_p), so
    the logit change ``W Π_n f`` and, for a linear translator, ``T(f̃)`` follow from
    ``p`` and the small products ``W B`` and ``A B`` — N·m·d work instead of several
    N·m·c and N·m·n products, with the same numbers to rounding.
    """

    role = HEADLINE
    Summary = NullRemovalSummary

    class Options(PluginOptions):
        pass

    def __init__(self, options: NullRemoval.Options | None = None):
        self.options = options or self.Options()

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        sub = ctx.subspaces
        n = ctx.features.shape[0]
        is_ = np.empty(n)
        as_own = np.empty(n)
        contrast = np.empty(n)
        drift = np.empty(n)
        agree = np.empty(n, dtype=bool)
        w = np.asarray(ctx.head.weight, dtype=np.float64)
        b = np.asarray(ctx.head.bias, dtype=np.float64)
        null_basis = sub.null_dim <= sub.rank
        basis = sub.null if null_basis else sub.principal
        w_b = w @ basis  # c×d
        maps = [t.linear_map() for t in ctx.translators] if ctx.translators else []
        linear = bool(maps) and all(mp is not None for mp in maps)
        a_b = [np.asarray(mp[0], dtype=np.float64) @ basis for mp in maps] if linear else []
        for rows in row_chunks(n):
            f = np.asarray(ctx.features[rows], dtype=np.float64)
            before = f @ w.T + b
            t_f = ctx.translated[rows]
            if sub.null_dim == 0:  # f̃ = f exactly: reuse T(f) rather than re-evaluate it
                t_r, delta = t_f, np.zeros_like(before)
            else:
                p = f @ basis
                # W Π_n f: directly through V_n, or as W f − W Π_p f through V_p
                delta = p @ w_b.T if null_basis else (before - b) - p @ w_b.T
                t_r = self._translate_removed(ctx, rows, p, null_basis, t_f, maps, a_b) if linear else (
                    ctx.translate(f - p @ basis.T if null_basis else p @ basis.T, rows)
                )
            is_[rows] = image_scores(t_f, t_r)
            as_all = attribute_scores(t_f, t_r, ctx.class_text)
            labels = ctx.labels[rows]
            as_own[rows] = as_all[np.arange(len(labels)), labels]
            contrast[rows] = attribute_contrast(as_all, labels)
            d = drift_from(before, delta)
            drift[rows] = d.relative
            agree[rows] = d.agreement
        summary = NullRemovalSummary(
            logit_drift_relative_max=float(drift.max()) if n else None,
            logit_drift_relative_mean=float(drift.mean()) if n else None,
            prediction_agreement=float(agree.mean()) if n else None,
        )
        return ProbeOutput(
            per_image={"is": is_, "as": as_own, "as_contrast": contrast, "logit_drift": drift},
            summary=summary,
            scores=Scores(image_score=is_, attribute_score=as_own, attribute_contrast=contrast),
        )

    @staticmethod
    def _translate_removed(ctx, rows, p, null_basis, t_f, maps, a_b) -> np.ndarray:
        """``T(f̃)`` for each image by the affine map of its own fold: ``T(f) − (f V_n)(A V_n)ᵀ``
        or ``c + (f V_p)(A V_p)ᵀ``."""
        fold_rows = ctx.folds[rows]
        out = np.empty_like(t_f)
        for k in np.unique(fold_rows):
            sel = fold_rows == k
            out[sel] = t_f[sel] - p[sel] @ a_b[k].T if null_basis else maps[k][1] + p[sel] @ a_b[k].T
        return out


@hookimpl
def register_probes(register):
    register("null_removal", NullRemoval)
