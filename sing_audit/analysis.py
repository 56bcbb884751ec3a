"""From per-image scores to per-class statistics, flags and model-level figures.

Pure functions on arrays and the policy; no I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from .config import PolicyConfig
from .results import ClassResult, Fidelity, Interval
from .scores import unit_rows
from .stats import MeanCI, bootstrap_mean_ci, robust_outliers

__all__ = ["class_results", "apply_policy", "fidelity_figures", "zero_shot_accuracy", "ratio"]


def _interval(ci: MeanCI) -> Interval:
    return Interval(low=ci.low, high=ci.high)


def class_results(
    labels: np.ndarray,
    class_names: list[str],
    image_score: np.ndarray,
    attribute_score: np.ndarray,
    attribute_contrast: np.ndarray,
    generator: np.random.Generator,
    n_boot: int = 1000,
) -> list[ClassResult]:
    """Mean AS, |AS|, IS and AS contrast with bootstrap intervals, for every class present."""
    out = []
    for k in np.unique(labels):
        rows = labels == k
        a = attribute_score[rows]
        ci_as = bootstrap_mean_ci(a, generator, n_boot)
        ci_abs = bootstrap_mean_ci(np.abs(a), generator, n_boot)
        ci_is = bootstrap_mean_ci(image_score[rows], generator, n_boot)
        ci_con = bootstrap_mean_ci(attribute_contrast[rows], generator, n_boot)
        out.append(
            ClassResult(
                index=int(k),
                name=class_names[int(k)],
                n=int(rows.sum()),
                as_mean=ci_as.mean,
                as_abs_mean=ci_abs.mean,
                as_contrast=ci_con.mean,
                is_mean=ci_is.mean,
                as_mean_ci=_interval(ci_as),
                as_abs_ci=_interval(ci_abs),
                as_contrast_ci=_interval(ci_con),
                is_ci=_interval(ci_is),
            )
        )
    return out


@dataclass
class PolicyOutcome:
    n_flagged: int
    n_waived: int
    n_outliers: int
    flagged_names: list[str]
    passed: bool


def apply_policy(
    model_name: str, classes: list[ClassResult], policy: PolicyConfig, today: dt.date | None = None
) -> PolicyOutcome:
    """Flag classes by DESIGN.md's rule, mark outliers, apply waivers (in place).

    Flagged: at least ``min_images`` images and the lower bound of the 95% interval of
    mean |AS| above ``as_threshold``. Outliers (robust z-score of mean |AS| among classes
    with enough images) are marked apart and never count toward ``max_flagged``.
    """
    today = today or dt.date.today()
    for c in classes:  # applying the policy twice gives the same answer
        c.flagged = c.outlier = c.waived = False
        c.flag_reasons = []
        c.waiver_reason = c.waiver_expires = None
    eligible = [c for c in classes if c.n >= policy.min_images]
    values = np.array([c.as_abs_mean if c.as_abs_mean is not None else np.nan for c in eligible])
    for c, is_out in zip(eligible, robust_outliers(values, policy.outlier_z)):
        c.outlier = bool(is_out)
    n_flagged = n_waived = 0
    names = []
    for c in classes:
        low = c.as_abs_ci.low
        if c.n >= policy.min_images and low is not None and low > policy.as_threshold:
            c.flagged = True
            c.flag_reasons.append(
                f"mean |AS| {c.as_abs_mean:.2f}° (95% CI {low:.2f}–{c.as_abs_ci.high:.2f}°) over {c.n} images: "
                f"the lower bound is above the {policy.as_threshold:g}° threshold"
            )
            waiver = _find_waiver(model_name, c, policy, today)
            if waiver is not None and waiver.active(today):
                c.waived = True
                c.waiver_reason = waiver.reason
                c.waiver_expires = waiver.expires.isoformat() if waiver.expires else None
                n_waived += 1
            else:
                if waiver is not None:
                    c.flag_reasons.append(f"waiver expired on {waiver.expires.isoformat()}: {waiver.reason}")
                n_flagged += 1
                names.append(c.name)
    return PolicyOutcome(
        n_flagged=n_flagged,
        n_waived=n_waived,
        n_outliers=sum(c.outlier for c in classes),
        flagged_names=names,
        passed=n_flagged <= policy.max_flagged,
    )


def _find_waiver(model_name: str, c: ClassResult, policy: PolicyConfig, today: dt.date):
    """The waiver for this class: an active one if any, else the latest-expiring one."""
    matches = [
        w
        for w in policy.waivers
        if w.model == model_name
        and ((isinstance(w.class_, int) and w.class_ == c.index) or (isinstance(w.class_, str) and w.class_ == c.name))
    ]
    active = [w for w in matches if w.active(today)]
    if active:
        return active[0]
    return max(matches, key=lambda w: w.expires, default=None)


def fidelity_figures(translated: np.ndarray, embeddings: np.ndarray) -> dict[str, float]:
    """Held-out mean cosine, variance-weighted R² and MSE of ``translated`` vs ``embeddings``."""
    t = np.asarray(translated, dtype=np.float64)
    z = np.asarray(embeddings, dtype=np.float64)
    cos = float(np.mean(np.einsum("ij,ij->i", unit_rows(t), unit_rows(z))))
    resid = float(np.sum((z - t) ** 2))
    total = float(np.sum((z - z.mean(axis=0)) ** 2))
    r2 = 1.0 - resid / total if total > 0 else float("nan")
    return {"cosine": cos, "r2": r2, "mse": resid / z.size}


def zero_shot_accuracy(embeddings: np.ndarray, class_text: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose nearest class prompt (cosine) is their label."""
    pred = np.argmax(unit_rows(embeddings) @ unit_rows(class_text).T, axis=1)
    return float(np.mean(pred == labels))


def ratio(is_mean: float | None, as_abs_mean: float | None, null_dim: int) -> float | None:
    """``mean(IS) / mean(|AS|)``; ``None`` with no null space or no attribute change."""
    if null_dim == 0 or is_mean is None or as_abs_mean is None or as_abs_mean <= 0:
        return None
    return float(is_mean / as_abs_mean)


def fidelity_model(fig: dict[str, float], folds: int, translator: str, params: dict, null_energy: float | None, normalized: bool) -> Fidelity:
    return Fidelity(folds=folds, translator=translator, params=params, null_energy=null_energy, normalized_targets=normalized, **fig)
