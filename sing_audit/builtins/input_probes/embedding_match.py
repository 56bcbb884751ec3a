"""The ``embedding_match`` probe: images moved until the classifier sees another image in them."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from sing_audit import input_space as S
from sing_audit.components import PluginOptions
from sing_audit.errors import ConfigError
from sing_audit.probes import Probe, ProbeContext, ProbeOutput, ProbeSummary
from sing_audit.builtins.input_probes.common import (
    Stat,
    TargetSemantics,
    per_image_column,
    finite_or_none,
    row_image_ids,
    stat_of,
    context_inputs,
    score_equivalent_images,
)


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
    #: IS/AS of matched images under the target's image encoder: AS toward the
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
            pixel_l2=stat_of(res.pixel_l2), pixel_linf=stat_of(res.pixel_linf),
            psnr_mean=finite_or_none(finite.mean()) if finite.size else None,
            distance_before=stat_of(res.distance_before), distance_after=stat_of(res.distance_after),
            cosine_after=stat_of(res.cosine_after), steps_mean=float(res.steps.mean()) if n else 0.0,
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
        ids = row_image_ids(ctx, rows)
        res, summary = self.run_on(model, x, x[tgt], mean, std)
        for i, pair in enumerate(summary.pairs):
            pair["source"], pair["target"] = ids[i], ids[int(tgt[i])]
        n = int(ctx.features.shape[0])
        per_image = {
            "pixel_l2": per_image_column(n, rows, res.pixel_l2),
            "distance_after": per_image_column(n, rows, res.distance_after),
        }
        if o.target_semantics:
            sem, is_, as_ = score_equivalent_images(ctx, x, res.matched, mean, std, rows, ids, other_rows=rows[tgt])
            summary.target_semantics = sem
            if is_ is not None:
                per_image["target_is"] = per_image_column(n, rows, is_)
                per_image["target_as"] = per_image_column(n, rows, as_)
        return ProbeOutput(per_image=per_image, summary=summary)
