"""The optional ``principal_consistency`` probe.

SING's consistency check: a linear classifier trained on the principal features
``Π_p f`` (coordinates ``V_pᵀ f``) and one trained on their translations ``T(f̃)`` should
reach similar accuracy when the translator preserves the class information the head
uses. Both accuracies are cross-validated (stratified folds, scikit-learn logistic
regression on standardised inputs). Across models, the audit-level aggregate reports how
the two accuracies correlate (Pearson), which is what the paper inspects.

Summary: ``{"accuracy_principal": float, "accuracy_translated": float, "folds": int}``;
aggregate: ``{"models": [...], "accuracy_principal": [...], "accuracy_translated": [...],
"pearson_r": float | None}``.
"""

from __future__ import annotations

import warnings

import numpy as np
from pydantic import Field

from sing_audit.components import PluginOptions
from sing_audit.hookspecs import hookimpl
from sing_audit.nullspace import remove_null
from sing_audit.probes import Probe, ProbeContext, ProbeOutput, ProbeSummary, row_chunks


def cross_validated_accuracy(x: np.ndarray, y: np.ndarray, folds: int, seed: int, max_iter: int) -> float | None:
    """Mean held-out accuracy of a standardised logistic regression (None if untestable)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(y)
    counts = counts[counts > 0]
    if counts.size < 2 or counts.min() < folds:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return float(np.mean(scores))


class PrincipalConsistencySummary(ProbeSummary):
    """Cross-validated accuracy of a linear classifier on the principal coordinates and on
    the translated features after null removal."""

    probe = "principal_consistency"

    accuracy_principal: float | None = None
    accuracy_translated: float | None = None
    folds: int | None = None


class PrincipalConsistency(Probe):
    """Accuracy of a classifier on principal features before and after translation."""

    Summary = PrincipalConsistencySummary

    class Options(PluginOptions):
        folds: int = Field(default=3, ge=2)
        max_iter: int = Field(default=500, ge=10)
        seed: int = 0

    def __init__(self, options: "PrincipalConsistency.Options | None" = None):
        self.options = options or self.Options()

    def run(self, ctx: ProbeContext) -> ProbeOutput:
        sub = ctx.subspaces
        n = ctx.features.shape[0]
        coords = np.empty((n, sub.rank))
        translated = np.empty((n, ctx.translated.shape[1]))
        for rows in row_chunks(n):
            f = np.asarray(ctx.features[rows], dtype=np.float64)
            coords[rows] = f @ sub.principal
            translated[rows] = ctx.translated[rows] if sub.null_dim == 0 else ctx.translate(remove_null(f, sub), rows)
        o = self.options
        summary = PrincipalConsistencySummary(
            accuracy_principal=cross_validated_accuracy(coords, ctx.labels, o.folds, o.seed, o.max_iter),
            accuracy_translated=cross_validated_accuracy(translated, ctx.labels, o.folds, o.seed, o.max_iter),
            folds=o.folds,
        )
        return ProbeOutput(summary=summary)

    def aggregate(self, summaries):
        names = [k for k, s in summaries.items() if s.get("accuracy_principal") is not None and s.get("accuracy_translated") is not None]
        before = [summaries[k]["accuracy_principal"] for k in names]
        after = [summaries[k]["accuracy_translated"] for k in names]
        r = None
        if len(names) >= 3 and np.std(before) > 0 and np.std(after) > 0:
            r = float(np.corrcoef(before, after)[0, 1])
        return {"models": names, "accuracy_principal": before, "accuracy_translated": after, "pearson_r": r}


@hookimpl
def register_probes(register):
    register("principal_consistency", PrincipalConsistency)
