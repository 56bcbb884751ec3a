"""From per-image scores to per-class statistics, flags and model-level figures.

Pure functions on arrays and the policy; no I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import PolicyConfig
from .results import ClassResult, Interval, ModelComparison, ModelResult, TargetAgreement
from .scores import unit_rows
from .terminal import shorten
from .stats import MIN_OUTLIER_VALUES, MeanCI, bootstrap_mean_ci, robust_outliers

__all__ = [
    "class_results",
    "apply_policy",
    "fidelity_figures",
    "zero_shot_accuracy",
    "zero_shot_figures",
    "ratio",
    "not_assessed_reasons",
    "policy_failures",
    "judge_model",
    "model_verdict",
    "flagged_count",
    "model_summary",
    "audit_passed",
    "verdict_text",
    "target_agreement",
    "compare_models",
]


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
    #: classes with at least ``policy.min_images`` images: the ones the policy can judge
    n_judged: int
    flagged_names: list[str]
    #: whether outliers were looked for (at least MIN_OUTLIER_VALUES judged classes)
    outliers_computed: bool
    passed: bool


def apply_policy(
    model_name: str, classes: list[ClassResult], policy: PolicyConfig, today: dt.date | None = None
) -> PolicyOutcome:
    """Flag classes by the policy's rule, mark outliers, apply waivers (in place).

    Judged: at least ``min_images`` images. Flagged: judged and the lower bound of the
    95% interval of mean |AS| above ``as_threshold``. A flagged class counts toward
    ``max_flagged`` unless an active waiver covers it. Outliers (robust z-score of mean
    |AS| above ``outlier_z`` among the judged classes, looked for only with at least
    :data:`~sing_audit.stats.MIN_OUTLIER_VALUES` of them) are marked for information: being
    an outlier neither flags a class nor exempts a flagged one.
    """
    today = today or dt.date.today()
    for c in classes:  # applying the policy twice gives the same answer
        c.flagged = c.outlier = c.waived = False
        c.flag_reasons = []
        c.waiver_reason = c.waiver_expires = None
    judged = [c for c in classes if c.n >= policy.min_images]
    values = np.array([c.as_abs_mean if c.as_abs_mean is not None else np.nan for c in judged])
    for c, is_out in zip(judged, robust_outliers(values, policy.outlier_z)):
        c.outlier = bool(is_out)
    n_flagged = n_waived = 0
    names = []
    for c in judged:
        low = c.as_abs_ci.low
        if low is not None and low > policy.as_threshold:
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
        n_judged=len(judged),
        flagged_names=names,
        outliers_computed=int(np.isfinite(values).sum()) >= MIN_OUTLIER_VALUES,
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


def logit_correlation(translated: np.ndarray, embeddings: np.ndarray, class_text: np.ndarray,
                      chunk: int = 4096) -> float | None:
    """Pearson r between the target's zero-shot logits of the real image embeddings and
    those of the translated features, pooled over every (image, class prompt) pair.

    A zero-shot logit is the cosine to a class prompt, ``cos(z_i, t_k)`` for the image's
    own embedding and ``cos(T(f_i), t_k)`` for its held-out translation; ``class_text``
    holds one prompt per head class. ``r = 1`` when the translation ranks and spaces every
    image's class prompts exactly as the image's own embedding does. Accumulated a row
    chunk at a time (never the N×c matrices at once), in float64, with sums shifted by the
    first chunk's means so the one-pass formula does not lose digits to cancellation.
    ``None`` when either side has no variance (fewer than two values, constant logits).
    """
    return _zero_shot_pass(translated, embeddings, class_text, None, chunk)[0]


def zero_shot_figures(translated: np.ndarray, embeddings: np.ndarray, class_text: np.ndarray,
                      labels: np.ndarray | None, chunk: int = 4096) -> dict[str, float | None]:
    """:func:`logit_correlation` and, with ``labels``, the :func:`zero_shot_accuracy` of the
    image embeddings and of the translated features, from one pass over the rows: the two
    N×c cosine matrices are what all three are made of, so each is formed once, a row chunk
    at a time, instead of twice. Accuracies are ``None`` without labels."""
    r, target_hits, translator_hits = _zero_shot_pass(translated, embeddings, class_text, labels, chunk)
    out: dict[str, float | None] = {"logit_correlation": r, "target_zero_shot": None, "translator_zero_shot": None}
    if labels is not None:
        if target_hits is None:  # nothing to pass over (no image or no prompt): the plain definitions
            out["target_zero_shot"] = zero_shot_accuracy(embeddings, class_text, labels)
            out["translator_zero_shot"] = zero_shot_accuracy(translated, class_text, labels)
        else:
            n = int(np.asarray(translated).shape[0])
            out["target_zero_shot"], out["translator_zero_shot"] = target_hits / n, translator_hits / n
    return out


def _zero_shot_pass(translated, embeddings, class_text, labels, chunk: int):
    """(logit correlation, target hits, translator hits); hits are ``None`` without labels
    or with nothing to pass over."""
    text = unit_rows(np.asarray(class_text, dtype=np.float64))
    n = int(np.asarray(translated).shape[0])
    if n == 0 or text.shape[0] == 0:
        return None, None, None
    lab = None if labels is None else np.asarray(labels)
    hits_z = hits_t = 0
    shift = None
    count = sx = sy = sxx = syy = sxy = 0.0
    for start in range(0, n, chunk):
        rows = slice(start, min(n, start + chunk))
        x = unit_rows(np.asarray(embeddings[rows], dtype=np.float64)) @ text.T
        y = unit_rows(np.asarray(translated[rows], dtype=np.float64)) @ text.T
        if lab is not None:
            hits_z += int(np.sum(np.argmax(x, axis=1) == lab[rows]))
            hits_t += int(np.sum(np.argmax(y, axis=1) == lab[rows]))
        if shift is None:
            shift = (float(x.mean()), float(y.mean()))
        x, y = x - shift[0], y - shift[1]
        count += x.size
        sx, sy = sx + float(x.sum()), sy + float(y.sum())
        sxx, syy, sxy = sxx + float(np.sum(x * x)), syy + float(np.sum(y * y)), sxy + float(np.sum(x * y))
    hits = (None, None) if lab is None else (hits_z, hits_t)
    if count < 2:
        return None, *hits
    vx, vy = sxx - sx * sx / count, syy - sy * sy / count
    if vx <= 0 or vy <= 0:
        return None, *hits
    return float(np.clip((sxy - sx * sy / count) / np.sqrt(vx * vy), -1.0, 1.0)), *hits


def ratio(is_mean: float | None, as_abs_mean: float | None, null_dim: int) -> float | None:
    """``mean(IS) / mean(|AS|)``; ``None`` with no null space or no attribute change."""
    if null_dim == 0 or is_mean is None or as_abs_mean is None or as_abs_mean <= 0:
        return None
    return float(is_mean / as_abs_mean)


def not_assessed_reasons(m: ModelResult, policy: PolicyConfig) -> list[str]:
    """Why nothing about ``m`` can be judged (empty: it can be). A model with a reason
    is *not assessed*: it neither passes nor fails on its numbers.

    - no class has ``min_images`` images: no class can be flagged, so a pass would be vacuous;
    - null dimension 0: null removal changes nothing, every AS and IS is 0 by construction;
    - translator fidelity below ``min_fidelity``: the map the scores rest on does not
      explain the target space, so its angles say nothing.
    """
    out = []
    if m.n_judged == 0:
        out.append(f"{m.n_judged} of {len(m.classes)} classes have ≥ {policy.min_images} images")
    if m.null_dim == 0:
        if m.rank_rule == "rank":
            out.append(
                f"null dimension 0 under rule {m.rank_rule_label}: this head has no exact null space; "
                "rule energy or fraction audits an approximate one"
            )
        else:
            out.append(
                f"null dimension 0 under rule {m.rank_rule_label}: the rule keeps every direction, so null removal "
                "changes nothing; keep less (e.g. a lower energy or rank, or rule fraction)"
            )
    cos = m.fidelity.cosine
    if policy.min_fidelity is not None and (cos is None or cos < policy.min_fidelity):
        floor = f"{policy.min_fidelity:g}"
        digits = max(2, len(floor.partition(".")[2]))  # enough digits to see the value is below the floor
        shown = "n/a" if cos is None else f"{cos:.{digits}f}"
        out.append(f"translator fidelity {shown} below the floor {floor}")
    return out


def policy_failures(m: ModelResult, policy: PolicyConfig) -> list[str]:
    """Every reason an assessed model ``m`` fails the policy (empty: it passes)."""
    out = []
    if m.n_flagged > policy.max_flagged:
        out.append(
            f"{m.n_flagged} flagged class(es) of {m.n_judged} judged ({', '.join(shorten(n) for n in m.flagged_classes[:5])}"
            f"{'…' if m.n_flagged > 5 else ''}), more than the {policy.max_flagged} allowed"
        )
    if policy.min_is_as_ratio is not None and m.is_as_ratio is not None and m.is_as_ratio < policy.min_is_as_ratio:
        out.append(f"IS/AS ratio {m.is_as_ratio:.2f} below the floor {policy.min_is_as_ratio:g}")
    return out


def model_verdict(m: ModelResult, policy: PolicyConfig) -> dict[str, Any]:
    """The verdict fields of the measured model ``m``: ``assessed`` (and
    ``not_assessed_reasons``), ``policy_failures``, ``passed`` and ``summary``. A model
    that is not assessed never passes."""
    reasons = not_assessed_reasons(m, policy)
    failures = [] if reasons else policy_failures(m, policy)
    verdict: dict[str, Any] = {"assessed": not reasons, "not_assessed_reasons": reasons, "policy_failures": failures,
                               "passed": not reasons and not failures}
    verdict["summary"] = model_summary(m.model_copy(update=verdict), policy)
    return verdict


def judge_model(m: ModelResult, policy: PolicyConfig) -> ModelResult:
    """``m`` with its verdict (:func:`model_verdict`); a new result, ``m`` is left as it is."""
    return m.model_copy(update=model_verdict(m, policy))


def _deg(v: float | None, unit: str = "°") -> str:
    return "n/a" if v is None else f"{v:.2f}{unit}"


def flagged_count(m: ModelResult) -> str:
    """``"2 flagged of 10 judged"``: a flagged count always says how many classes were judged."""
    return f"{m.n_flagged} flagged of {m.n_judged} judged"


def model_summary(m: ModelResult, policy: PolicyConfig) -> str:
    """One sentence per model that a manager can read."""
    who = f"{m.name} (with {m.target})"
    prefix = "Pipeline check with random weights — not a verdict on a trained model: " if m.random_weights else ""
    if not m.assessed:
        text = f"{who} was not assessed, so this audit says nothing about its leakage: " + "; ".join(m.not_assessed_reasons) + "."
    elif m.n_flagged or m.n_waived:
        names = ", ".join(shorten(n) for n in m.flagged_classes[:3]) + ("…" if len(m.flagged_classes) > 3 else "")
        flagged = [c for c in m.classes if c.flagged]
        worst = max((c.as_abs_mean or 0.0 for c in flagged), default=None)
        text = (
            f"{who} hides class meaning in its null space for {len(flagged) or m.n_flagged + m.n_waived} of "
            f"{m.n_judged} judged class(es){' (' + names + ')' if names else ''}: moving their features within the "
            f"null space, which changes no decision, shifts their meaning by up to {_deg(worst)} relative to the "
            f"class prompt (threshold {policy.as_threshold:g}°)"
            + (f"; {m.n_waived} of them waived by a reviewer." if m.n_waived else ".")
        )
    else:
        text = (
            f"{who} shows no class-specific leakage above {policy.as_threshold:g}° in the {m.n_judged} class(es) "
            f"with at least {policy.min_images} images: removing its null component moves features by "
            f"{_deg(m.is_mean)} on average, with a mean shift of only {_deg(m.as_abs_mean)} relative to the "
            "class prompts."
        )
        unjudged = len(m.classes) - m.n_judged
        if unjudged:
            text += f" {unjudged} class(es) with fewer images were not judged."
    if m.fidelity.cosine is not None and m.fidelity.cosine < policy.warn_fidelity and m.assessed:
        text += (
            f" Caution: the translator explains the target space poorly (held-out cosine {m.fidelity.cosine:.2f}), "
            "so these numbers are uncertain."
        )
    return prefix + text


def audit_passed(models: list[ModelResult], policy: PolicyConfig) -> bool:
    """The audit's verdict: no model failed, and every model was assessed unless the
    policy allows models that were not (``allow_not_assessed``). An audit with no model
    assessed at all passes only under that allowance."""
    return all(m.passed or (policy.allow_not_assessed and not m.assessed) for m in models)


def verdict_text(models: list[ModelResult], passed: bool, policy: PolicyConfig) -> str:
    """One line: PASSED / FAILED / NOT ASSESSED, with every failing model's reasons."""
    failing = [m for m in models if m.assessed and not m.passed]
    unassessed = [m for m in models if not m.assessed]
    parts = [f"{m.name} ({m.target}): " + "; ".join(m.policy_failures) for m in failing]
    missing = [f"{m.name} ({m.target}): " + "; ".join(m.not_assessed_reasons) for m in unassessed]
    if passed:
        assessed = len(models) - len(unassessed)
        text = (
            f"PASSED: {assessed} model(s) assessed; none has more than {policy.max_flagged} flagged class(es) "
            "or misses a floor."
        )
        if unassessed:
            text += f" NOT ASSESSED (allowed by policy.allow_not_assessed): " + " | ".join(missing)
        return text
    if failing:
        text = "FAILED: " + " | ".join(parts)
        return text + (" | NOT ASSESSED: " + " | ".join(missing) if missing else "")
    return "NOT ASSESSED: " + " | ".join(missing)


def target_agreement(models: list[ModelResult]) -> list[TargetAgreement]:
    """For each pair of targets: do they order the backbones the same way by mean |AS|?"""
    by_target: dict[str, dict[str, float]] = {}
    for m in models:
        if m.as_abs_mean is not None:
            by_target.setdefault(m.target, {})[m.name] = m.as_abs_mean
    targets = sorted(by_target)
    out = []
    for i, a in enumerate(targets):
        for b in targets[i + 1 :]:
            common = sorted(set(by_target[a]) & set(by_target[b]))
            if len(common) < 2:
                continue
            xa = [by_target[a][n] for n in common]
            xb = [by_target[b][n] for n in common]
            from scipy.stats import kendalltau  # here: an audit of one target never pays for scipy.stats

            tau = kendalltau(xa, xb).statistic
            same = [common[j] for j in np.argsort(xa, kind="stable")] == [common[j] for j in np.argsort(xb, kind="stable")]
            out.append(TargetAgreement(targets=[a, b], models=common, kendall_tau=float(tau), same_order=bool(same)))
    return out


def compare_models(
    target: str, name_a: str, abs_a: np.ndarray, name_b: str, abs_b: np.ndarray, generator: np.random.Generator, n_boot: int = 1000
) -> ModelComparison:
    """Mann–Whitney U test and a bootstrap interval of the difference of mean |AS| (b − a)."""
    from scipy.stats import mannwhitneyu

    a = np.asarray(abs_a, dtype=np.float64)
    b = np.asarray(abs_b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return ModelComparison(target=target, model_a=name_a, model_b=name_b)
    test = mannwhitneyu(b, a, alternative="two-sided")
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        diffs[i] = b[generator.integers(0, b.size, b.size)].mean() - a[generator.integers(0, a.size, a.size)].mean()
    low, high = np.quantile(diffs, [0.025, 0.975])
    p = float(test.pvalue)
    return ModelComparison(
        target=target,
        model_a=name_a,
        model_b=name_b,
        as_abs_mean_diff=float(b.mean() - a.mean()),
        diff_ci=Interval(low=float(low), high=float(high)),
        mannwhitney_u=float(test.statistic),
        p_value=p,
        differ=bool(p < 0.05 and (low > 0 or high < 0)),
    )
