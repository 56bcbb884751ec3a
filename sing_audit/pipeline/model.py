"""The analysis of one model (a backbone under a target): its inputs aligned and checked,
the head split, the translator cross-fitted, the probes run, the statistics measured and
the evidence gathered; :func:`sing_audit.pipeline.build.build_model_result` then builds
its result once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..analysis import apply_policy, class_results
from ..components import ImageTarget, LinearHead
from ..errors import ConfigError, DataError
from ..nullspace import HeadSubspaces, split_head
from ..probes import HeadlineSummary, ProbeContext, ProbeOutput, Scores, headline_probe, row_chunks
from ..progress import progress
from ..results import ModelResult, NullRemovalDrift
from ..stats import bootstrap_mean_ci, bootstrap_ratio_ci
from ..store import content_key
from .build import Statistics, build_model_result, build_per_image
from .cache import ArrayStore
from .crossfit import CrossFitted, FitSettings, align, check_finite, compare_family, fit_family
from .devices import ModelLoader
from .evidence import render_evidence, top_images
from .images import ImageSource
from .plan import Plan
from .sources import EmbeddingSource, FeatureSource, Sources
from .stages import StageClock
from .text import TextEncoder

__all__ = ["Headline", "ModelInputs", "ProbeOutputs", "Services", "analyse_model", "headline_scores",
           "prepare_model", "probe_context", "probe_summaries", "run_probes"]


@dataclass(frozen=True)
class Services:
    """What the analysis of a model uses of the run: its plan, the store, the stage clock,
    the model loader, the images, and the output folder ``out``."""

    plan: Plan
    store: ArrayStore
    clock: StageClock
    loader: ModelLoader
    images: ImageSource
    out: Path

    @classmethod
    def of(cls, sources: Sources) -> "Services":
        """The services of a run whose dataset ``sources`` has loaded."""
        plan = sources.plan
        dataset = plan.dataset.instance if plan.dataset is not None else None
        images = ImageSource(dataset, sources.records, sources.loader)
        return cls(plan, sources.store, sources.clock, sources.loader, images, plan.config.output_dir)

    def text_encoder(self, esrc: EmbeddingSource) -> TextEncoder:
        """The text encoder of the target ``esrc`` (one per target and run: it keeps the
        class embeddings it made)."""
        return TextEncoder(self.store, self.clock, self.loader, esrc.target, esrc.describe, esrc.name)

    def fit_settings(self) -> FitSettings:
        run = self.plan.config.run
        return FitSettings(run.folds, run.seed, self.out / "cache")


@dataclass
class ModelInputs:
    """One backbone under one target, aligned and checked, with its primary translator."""

    feats: np.ndarray  # N×m stored rows (float32/float16, possibly memory-mapped): read in chunks
    emb: np.ndarray  # N×n stored rows, as feats
    frows: np.ndarray
    ids: list[str] | None
    labels: np.ndarray
    labels_source: str
    predicted: np.ndarray
    head: LinearHead
    sub: HeadSubspaces
    text: np.ndarray
    key_parts: dict
    primary: CrossFitted
    #: where the class prompt embeddings came from (``TextEncoder.class_prompts``)
    class_prompts: dict = field(default_factory=dict)


def _aligned_rows(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]`` without a copy when ``rows`` is a contiguous range (the usual case:
    every image is valid); otherwise a copy in the stored dtype (never float64)."""
    rows = np.asarray(rows)
    if rows.size and rows[-1] - rows[0] == rows.size - 1 and np.all(np.diff(rows) == 1):
        return values[int(rows[0]) : int(rows[-1]) + 1]
    return np.asarray(values[rows])


def _predicted_classes(feats: np.ndarray, head: LinearHead) -> np.ndarray:
    """``argmax(f Wᵀ + b)`` per row, in float64, one row chunk at a time (N)."""
    weight_t = np.asarray(head.weight, dtype=np.float64).T
    bias = np.asarray(head.bias, dtype=np.float64)
    out = np.empty(feats.shape[0], dtype=np.int64)
    for rows in row_chunks(feats.shape[0]):
        out[rows] = np.argmax(np.asarray(feats[rows], dtype=np.float64) @ weight_t + bias, axis=1)
    return out


def _head_subspaces(store: ArrayStore, ns, head: LinearHead, label: str) -> HeadSubspaces:
    """``split_head`` under the configured rule ``ns`` (the config's ``nullspace``), cached
    in the store by the weight's bytes (a c×m SVD in float64 costs seconds; a rerun with
    nothing changed reads it back)."""
    weight = np.ascontiguousarray(head.weight)
    params = {"rule": ns.rule, "rtol": ns.rtol, "atol": ns.atol, "weight_eps": head.weight_eps, "keep": ns.keep, "rank": ns.rank, "null_fraction": ns.null_fraction}
    key = content_key("subspaces", hashlib.sha256(weight.tobytes()).hexdigest(), weight.dtype.str, weight.shape, params)
    hit = store.load("subspaces", key, mmap=False)
    if hit is not None:
        arrays, meta = hit
        return HeadSubspaces(
            principal=arrays["principal"], null=arrays["null"], singular_values=arrays["singular_values"],
            rule=meta["rule"], rank=int(meta["rank"]), tolerance=meta["tolerance"],
            exact=bool(meta["exact"]), cut=meta["cut"],
        )
    try:
        sub = split_head(
            head.weight, ns.rule, rtol=ns.rtol, atol=ns.atol, weight_eps=head.weight_eps, keep=ns.keep, rank=ns.rank,
            null_fraction=ns.null_fraction,
        )
    except ValueError as exc:
        raise ConfigError(f"nullspace: {label}: {exc}") from exc
    store.save(
        "subspaces", key, {"principal": sub.principal, "null": sub.null, "singular_values": sub.singular_values},
        {"rule": sub.rule, "rank": sub.rank, "tolerance": sub.tolerance, "exact": sub.exact, "cut": sub.cut},
    )
    return sub


def prepare_model(services: Services, fsrc: FeatureSource, esrc: EmbeddingSource, text: TextEncoder) -> ModelInputs:
    """Align, check, split the head, embed the class prompts and cross-fit the translator."""
    plan = services.plan
    frows, erows, ids = align(fsrc, esrc)
    if frows.size == 0:
        raise DataError(f"backbone {fsrc.name} and target {esrc.name} share no image")
    # the stored rows as they are (memory-mapped float32/float16): every consumer reads
    # them in row chunks converted to float64, so no float64 copy of all features exists
    feats = _aligned_rows(fsrc.features, frows)
    emb = _aligned_rows(esrc.embeddings, erows)
    head = fsrc.head
    label = f"backbone {fsrc.name}"
    check_finite(feats, f"{label}: features", ids)
    check_finite(emb, f"target {esrc.name}: image embeddings", ids)
    if feats.shape[1] != head.num_features:
        raise DataError(f"{label}: features have {feats.shape[1]} dimensions but the head expects {head.num_features}")
    sub = _head_subspaces(services.store, plan.config.nullspace, head, label)
    predicted = _predicted_classes(feats, head)
    if fsrc.labels is not None:
        labels = np.asarray(fsrc.labels)[frows]
        if labels.min() < 0 or labels.max() >= head.num_classes:
            raise DataError(f"{label}: labels must be head indices in [0, {head.num_classes}), got {labels.min()}..{labels.max()}")
        labels_source = "labels"
    else:
        labels = predicted
        labels_source = "predicted"
    class_text = text.class_text(fsrc.class_names)
    prompts = dict(getattr(text, "class_prompts", None) or {})
    if class_text.shape[1] != emb.shape[1]:
        origin = f" (from {prompts['file']})" if prompts.get("source") == "file" else ""
        raise DataError(
            f"target {esrc.name}: text embeddings{origin} have {class_text.shape[1]} dimensions, image embeddings "
            f"{emb.shape[1]}" + ("; the file must hold vectors of this target's embedding space" if origin else "")
        )

    with services.clock.stage("translator"):
        key_parts = {
            "backbone": fsrc.describe,
            "target": esrc.describe,
            "rows": content_key(ids if ids is not None else int(feats.shape[0])),
            "labels": content_key(labels.tolist()),
        }
        comp = plan.translator
        factory = plan.registry.get("translator", comp.plugin).factory
        primary = fit_family(services.fit_settings(), comp, factory, feats, emb, labels, key_parts, sub, esrc.name)
        if not primary.linear:
            raise ConfigError(
                f"translator {comp.plugin!r} is not linear: the verdict and the fidelity gate rest on "
                "a linear translator, because equivalent features of a nonlinear one lie off the data it was fitted on; "
                "keep translator: linear and list nonlinear families under compare_translators"
            )
    return ModelInputs(feats, emb, frows, ids, labels, labels_source, predicted, head, sub, class_text, key_parts, primary,
                       prompts)


# --------------------------------------------------------------------------- probes


#: what the probes measured: (plugin name, output) per probe component, in the config's order
ProbeOutputs = list[tuple[str, ProbeOutput]]


def run_probes(probes, ctx: ProbeContext) -> ProbeOutputs:
    """Every probe component's output on ``ctx``."""
    outputs = []
    with progress(total=len(probes), desc="probes", unit="probe") as bar:
        for comp in probes:
            bar.set_description(f"probe {comp.plugin}")
            outputs.append((comp.plugin, comp.instance.run(ctx)))
            bar.update(1)
    return outputs


def probe_summaries(outputs: ProbeOutputs) -> dict[str, dict]:
    """The probes' summaries by plugin name (a plugin listed twice: its last summary)."""
    return {plugin: out.summary for plugin, out in outputs}


@dataclass(frozen=True)
class Headline:
    """The headline measurements among the probes' outputs: the per-image scores, whose
    probe it is (its per-image columns keep their own names), and the logit drift."""

    probe: str
    scores: Scores
    drift: NullRemovalDrift


def headline_scores(probes: list, outputs: ProbeOutputs) -> Headline:
    """The headline IS/AS and logit drift: the output of the one probe component with the
    headline role (:func:`sing_audit.probes.headline_probe`; ``outputs`` are in the order
    of ``probes``), its drift read through :class:`~sing_audit.probes.HeadlineSummary`."""
    comp = headline_probe(probes)
    plugin, out = outputs[next(i for i, p in enumerate(probes) if p is comp)]
    if out.scores is None:
        raise ConfigError(f"the headline probe {plugin} produced no image and attribute scores")
    summary = HeadlineSummary.model_validate(out.summary)
    drift = NullRemovalDrift(
        relative_max=summary.logit_drift_relative_max,
        relative_mean=summary.logit_drift_relative_mean,
        prediction_agreement=summary.prediction_agreement,
    )
    return Headline(plugin, out.scores, drift)


# --------------------------------------------------------------------------- one model


def _statistics(name: str, mi: ModelInputs, class_names: list[str], scores, generator, cfg) -> Statistics:
    """Class results, the policy's outcome and the model's bootstrap intervals (drawn from
    ``generator`` after the probes, in this order)."""
    bootstrap = cfg.run.bootstrap
    classes = class_results(mi.labels, class_names, scores.image_score, scores.attribute_score, scores.attribute_contrast, generator, bootstrap)
    outcome = apply_policy(name, classes, cfg.policy)
    abs_as = np.abs(scores.attribute_score)
    is_ci = bootstrap_mean_ci(scores.image_score, generator, bootstrap)
    as_abs_ci = bootstrap_mean_ci(abs_as, generator, bootstrap)
    ratio_ci = bootstrap_ratio_ci(scores.image_score, abs_as, generator, bootstrap) if mi.sub.null_dim > 0 else (None, None)
    return Statistics(classes, outcome, is_ci, as_abs_ci, ratio_ci)


def probe_context(fsrc: FeatureSource, esrc: EmbeddingSource, mi: ModelInputs, text: TextEncoder, registry,
                  generator: np.random.Generator, **rows) -> ProbeContext:
    """The probes' context for the model ``fsrc`` under ``esrc``; ``rows`` overrides the
    per-image inputs (features, labels, embeddings, translated, folds, translate,
    translators, image_ids), which default to the audit's aligned rows."""
    per_image = dict(
        features=mi.feats, labels=mi.labels, embeddings=mi.emb, translated=mi.primary.translated,
        folds=mi.primary.folds, translate=mi.primary.translate, translators=mi.primary.translators,
        image_ids=mi.ids or [],
    )
    per_image.update(rows)
    return ProbeContext(
        model_name=fsrc.name, target_name=esrc.name, head=mi.head, subspaces=mi.sub,
        class_text=mi.text, class_names=fsrc.class_names, target=esrc.target, generator=generator,
        encode_text=text.encode, registry=registry, **per_image,
    )


def analyse_model(services: Services, fsrc: FeatureSource, esrc: EmbeddingSource,
                  text: TextEncoder) -> tuple[ModelResult, dict[str, np.ndarray]]:
    """The model's result (built once) and its per-image table."""
    plan, clock = services.plan, services.clock
    cfg = plan.config
    mi = prepare_model(services, fsrc, esrc, text)
    with clock.stage("translator"):
        comparisons = [
            compare_family(services.fit_settings(), comp, plan.registry.get("translator", comp.plugin).factory,
                           mi.feats, mi.emb, mi.labels, mi.key_parts, mi.sub, esrc.name, mi.text)
            for comp in plan.compare_translators
        ]
    generator = np.random.default_rng(cfg.run.seed)
    extra = {}
    if fsrc.component is not None and any(p.instance.needs_backbone for p in plan.probes):
        services.loader.ensure_loaded(fsrc.component)
        extra = {"backbone": fsrc.component, "images": services.images.loader_for(fsrc.component, mi.frows)}
    ctx = probe_context(fsrc, esrc, mi, text, plan.registry, generator, **extra)
    if any(p.instance.needs_target for p in plan.probes) and isinstance(esrc.target, ImageTarget):
        services.loader.ensure_loaded(esrc.target)
    with clock.stage("probes"):
        outputs = run_probes(plan.probes, ctx)
    headline = headline_scores(plan.probes, outputs)
    with clock.stage("statistics"):
        stats = _statistics(fsrc.name, mi, fsrc.class_names, headline.scores, generator, cfg)
    evidence = top_images(mi.ids, mi.labels, fsrc.class_names, headline.scores, cfg.report.top_images,
                          lambda image_id: services.images.thumbnail(image_id, services.out))
    summaries = probe_summaries(outputs)
    if plan.visualizer is not None and evidence:
        with clock.stage("visualizer"):
            summaries["renderings"] = render_evidence(plan.visualizer, ctx, evidence, seed=cfg.run.seed,
                                                      out=services.out, loader=services.loader)
    result = build_model_result(fsrc, esrc, mi, headline, stats, comparisons, summaries, evidence, cfg)
    return result, build_per_image(fsrc, mi, outputs, headline.probe, result.random_weights)
