"""The results, each built once by a pure function from what the run measured."""

from __future__ import annotations

import datetime as dt
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..analysis import (
    PolicyOutcome,
    audit_passed,
    compare_models,
    model_verdict,
    ratio,
    target_agreement,
    verdict_text,
    zero_shot_figures,
)
from ..config import AuditConfig
from ..nullspace import null_energy
from ..probes import ProbeOutput, row_chunks
from ..results import (
    AuditResult,
    ClassResult,
    Fidelity,
    ImageEvidence,
    Interval,
    ModelComparison,
    ModelResult,
    Provenance,
    SanityFigures,
    TranslatorComparison,
)
from ..stats import MeanCI
from ..store import content_key, slug
from .plan import Plan
from .sources import EmbeddingSource, FeatureSource

if TYPE_CHECKING:
    from .model import Headline, ModelInputs

__all__ = ["Statistics", "build_audit_result", "build_model_comparisons", "build_model_result", "build_per_image", "model_key",
           "versions"]


@dataclass(frozen=True)
class Statistics:
    """A model's class results, the policy's outcome on them, and its bootstrap intervals."""

    classes: list[ClassResult]
    outcome: PolicyOutcome
    is_ci: MeanCI
    as_abs_ci: MeanCI
    ratio_ci: tuple[float | None, float | None]


def model_key(name: str, target: str) -> str:
    """``name@target``: how files and aggregates name one model under one target."""
    return f"{name}@{target}"


def build_model_result(fsrc: FeatureSource, esrc: EmbeddingSource, mi: ModelInputs, headline: Headline,
                       stats: Statistics, comparisons: list[TranslatorComparison], probes: dict[str, dict[str, Any]],
                       top_images: list[ImageEvidence], cfg: AuditConfig) -> ModelResult:
    """The judged result of one model: its measurements, then the policy's verdict on them."""
    scores, sub, feats, labels, text = headline.scores, mi.sub, mi.feats, mi.labels, mi.text
    primary, outcome = mi.primary, stats.outcome
    random_parts = [p for p, r in ((f"backbone {fsrc.name}", fsrc.random_weights), (f"target {esrc.name}", esrc.random_weights)) if r]
    has_labels = mi.labels_source == "labels"
    zero_shot = zero_shot_figures(primary.translated, mi.emb, text, labels if has_labels else None)
    is_mean = float(np.mean(scores.image_score))
    as_abs_mean = float(np.mean(np.abs(scores.attribute_score)))
    measured: dict[str, Any] = dict(
        name=fsrc.name,
        backbone=fsrc.name,
        target=esrc.name,
        random_weights=bool(random_parts),
        random_weights_parts=random_parts,
        rank_rule=sub.rule,
        rank_cut=sub.cut,
        null_exact=sub.exact,
        class_prompts=mi.class_prompts,
        rank=sub.rank,
        null_dim=sub.null_dim,
        num_features=sub.num_features,
        num_classes=mi.head.num_classes,
        # row chunks: null_energy works in float64, which must not copy every feature at once
        null_energy=float(np.mean(np.concatenate([null_energy(feats[r], sub) for r in row_chunks(feats.shape[0])]))),
        n_images=int(feats.shape[0]),
        labels_source=mi.labels_source,
        is_mean=is_mean,
        is_ci=Interval(low=stats.is_ci.low, high=stats.is_ci.high),
        as_mean=float(np.mean(scores.attribute_score)),
        as_abs_mean=as_abs_mean,
        as_abs_ci=Interval(low=stats.as_abs_ci.low, high=stats.as_abs_ci.high),
        as_contrast_mean=float(np.nanmean(scores.attribute_contrast)) if np.isfinite(scores.attribute_contrast).any() else None,
        is_as_ratio=ratio(is_mean, as_abs_mean, sub.null_dim),
        is_as_ratio_ci=Interval(low=stats.ratio_ci[0], high=stats.ratio_ci[1]),
        logit_drift=headline.drift,
        fidelity=Fidelity(
            folds=cfg.run.folds,
            translator=cfg.translator.plugin,
            params=primary.params,
            null_energy=primary.null_energy,
            normalized_targets=primary.normalized,
            logit_correlation=zero_shot["logit_correlation"],
            **primary.fidelity,
        ),
        sanity=SanityFigures(
            classifier_top1=float(np.mean(mi.predicted == labels)) if has_labels else None,
            target_zero_shot=zero_shot["target_zero_shot"],
            translator_zero_shot=zero_shot["translator_zero_shot"],
        ),
        translator_comparison=comparisons,
        n_flagged=outcome.n_flagged,
        n_waived=outcome.n_waived,
        n_outliers=outcome.n_outliers,
        n_judged=outcome.n_judged,
        outliers_computed=outcome.outliers_computed,
        flagged_classes=outcome.flagged_names,
        classes=stats.classes,
        probes=probes,
        top_images=top_images,
        files={"images_csv": f"models/{slug(fsrc.name)}__{slug(esrc.name)}/images.csv"},
        weights_digest=fsrc.describe.get("weights_digest") or fsrc.describe.get("digest"),
    )
    return ModelResult(**measured, **model_verdict(ModelResult(**measured), cfg.policy))


def build_per_image(fsrc: FeatureSource, mi: ModelInputs, outputs: list[tuple[str, ProbeOutput]], headline_probe: str,
                    random_weights: bool) -> dict[str, np.ndarray]:
    """The model's per-image table (``images.csv``): one column per measurement; the
    headline probe's columns keep their names, every other probe's are ``probe.column``."""
    labels = mi.labels
    columns = {
        col if plugin == headline_probe else f"{plugin}.{col}": values
        for plugin, out in outputs
        for col, values in out.per_image.items()
    }
    return {
        "image_id": np.array(mi.ids if mi.ids is not None else [str(i) for i in mi.frows], dtype=object),
        "label": labels,
        "class_name": np.array([fsrc.class_names[i] for i in labels], dtype=object),
        "predicted": mi.predicted,
        "fold": mi.primary.folds,
        **columns,
        # the stamp every output carries: a spreadsheet of random-weight numbers says so on every row
        "random_weights": np.full(labels.shape[0], "RANDOM WEIGHTS" if random_weights else "no", dtype=object),
    }


def versions() -> dict[str, str]:
    out = {"sing-audit": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "timm", "open_clip_torch", "numpy", "scikit-learn", "pydantic", "pluggy", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def build_audit_result(plan: Plan, models: list[ModelResult], comparisons: list[ModelComparison], *,
                       dataset: dict[str, Any] | None, stage_seconds: dict[str, float], skipped: list[str],
                       files: dict[str, str], started: dt.datetime, finished: dt.datetime) -> AuditResult:
    """The audit's typed result from its models' results and the run's record."""
    cfg, source = plan.config, plan.source
    passed = audit_passed(models, cfg.policy)
    aggregates = {}
    for comp in plan.probes:
        summaries = {model_key(m.name, m.target): m.probes.get(comp.plugin, {}) for m in models}
        aggregated = comp.instance.aggregate(summaries)
        if aggregated is not None:
            aggregates[comp.plugin] = aggregated
    components = {f"backbone {c.name}": {"plugin": c.plugin, "package": c.package} for c in plan.backbones}
    components.update({f"target {c.name}": {"plugin": c.plugin, "package": c.package} for c in plan.targets})
    components["translator"] = {"plugin": plan.translator.plugin, "package": plan.translator.package}
    return AuditResult(
        name=cfg.name or (Path(source).stem if source != "<config>" else "audit"),
        passed=passed,
        assessed=all(m.assessed for m in models),
        random_weights=any(m.random_weights for m in models),
        verdict=verdict_text(models, passed, cfg.policy),
        policy=cfg.policy.model_dump(mode="json", by_alias=True),
        models=models,
        target_agreement=target_agreement(models),
        model_comparisons=comparisons,
        probe_aggregates=aggregates,
        provenance=Provenance(
            config=cfg.model_dump(mode="json", by_alias=True, exclude_none=True),
            config_digest=content_key(cfg.model_dump(mode="json", by_alias=True)),
            config_dir=str(Path(cfg.base_dir).resolve()),
            versions=versions(),
            components=components,
            dataset=dataset,
            seed=cfg.run.seed,
            stage_seconds={k: round(v, 3) for k, v in stage_seconds.items()},
            skipped_images=skipped,
            started=started.isoformat(timespec="seconds"),
            finished=finished.isoformat(timespec="seconds"),
        ),
        files=files,
    )


def build_model_comparisons(models: list[ModelResult], abs_as: dict[tuple[str, str], np.ndarray], seed: int,
                            bootstrap: int) -> list[ModelComparison]:
    """Every pair of models under the same target: do their per-image |AS| differ?"""
    comparisons = []
    generator = np.random.default_rng(seed)
    for i, ma in enumerate(models):
        for mb in models[i + 1 :]:
            if ma.target == mb.target:
                comparisons.append(
                    compare_models(
                        ma.target, ma.name, abs_as[(ma.name, ma.target)], mb.name, abs_as[(mb.name, mb.target)],
                        generator, bootstrap,
                    )
                )
    return comparisons
