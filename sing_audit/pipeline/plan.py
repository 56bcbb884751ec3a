"""The plan: what an audit runs — its config with every component built, nothing loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..classmap import map_labels
from ..components import EmbeddingTarget, FeatureBackbone, ImageBackbone, ImageDataset, ImageTarget, LinearHead
from ..config import AuditConfig, ComponentSpec
from ..errors import ConfigError, DataError
from ..extras import MissingExtraError
from ..host import BuildContext, Component, Registry, check_component, create_component
from ..probes import headline_probe
from ..store import content_key
from ..terminal import suggest
from ..visualize import check_visualizer

__all__ = ["Plan", "audit_identity", "build_plan", "check_cache_dir", "check_feature_dims", "check_labels", "create_reporter"]


@dataclass
class Plan:
    """Validated config with every component built (nothing loaded yet)."""

    config: AuditConfig
    registry: Registry
    dataset: Component | None
    targets: list[Component]
    backbones: list[Component]
    translator: Component
    compare_translators: list[Component]
    probes: list[Component]
    reporters: dict[str, Component]
    source: str = "<config>"
    visualizer: Component | None = None


def create_reporter(
    registry: Registry, fmt: str, options: dict | None = None, *, source: str = "<config>", base_dir=None
) -> Component:
    """The reporter component that writes format ``fmt`` (one the registry knows), with
    the run's registry at hand (its report sections are looked up there). A reporter with
    an ``Options`` model gets ``options`` (``report.options.<fmt>``) validated by it; one
    without refuses any."""
    reg = registry.reporters_by_format()[fmt]
    where = f"report.options.{fmt}"
    options = dict(options or {})
    if "plugin" in options:  # the format names the reporter
        raise ConfigError(f"{source}: {where}: 'plugin' is not an option: the format {fmt!r} names its reporter")
    context = BuildContext(registry, Path(base_dir) if base_dir is not None else Path.cwd(), source, where)
    spec = ComponentSpec(plugin=reg.name, **options)
    try:
        reporter = create_component(context, "reporter", spec, fmt)
    except MissingExtraError as exc:  # named where the config asks for it
        raise MissingExtraError(f"{source}: report.formats: {fmt}: {exc}", extra=exc.extra, module=exc.module) from exc
    reporter.instance.registry = registry
    return reporter


def build_plan(cfg: AuditConfig, registry: Registry, source: str = "<config>") -> Plan:
    """Validate every component's options, build the components and run their
    pre-flight checks (``check()``: paths, model names, cached weights; nothing loads),
    so ``validate`` and ``run`` find the same mistakes before any model is built."""
    built: list[tuple[BuildContext, Component]] = []

    def _build(kind: str, spec, where: str, name: str | None = None) -> Component:
        context = BuildContext(registry, cfg.base_dir, source, where)
        component = create_component(context, kind, spec, name or spec.plugin)
        built.append((context, component))
        return component

    dataset = _build("dataset", cfg.dataset, "dataset") if cfg.dataset else None
    targets = [
        _build("target", t, f"targets[{i}]" if cfg.targets else "target", t.name or t.plugin)
        for i, t in enumerate(cfg.target_specs())
    ]
    backbones = [_build("backbone", b, f"backbones[{i}]", b.name) for i, b in enumerate(cfg.backbones)]
    translator = _build("translator", cfg.translator, "translator")
    compared = [
        _build("translator", t, f"compare_translators[{i}]") for i, t in enumerate(cfg.compare_translators)
    ]
    probes = [_build("probe", p, f"probes[{i}]") for i, p in enumerate(cfg.probe_specs())]
    headline_probe(probes)  # a ConfigError when no probe (or more than one) has the headline role
    reporters: dict[str, Component] = {}
    available = registry.reporters_by_format()
    for fmt in cfg.report.options:
        if fmt not in available:
            raise ConfigError(f"{source}: report.options: options for unknown format {fmt!r}{suggest(fmt, list(available))}")
    for i, fmt in enumerate(cfg.report.formats):
        if fmt not in available:
            raise ConfigError(f"{source}: report.formats[{i}]: unknown format {fmt!r}{suggest(fmt, list(available))}")
        reporters[fmt] = create_reporter(
            registry, fmt, cfg.report.options.get(fmt), source=source, base_dir=cfg.base_dir
        )
    needs_images = [c for c in backbones + targets if isinstance(c.instance, (ImageBackbone, ImageTarget))]
    if needs_images and dataset is None:
        raise ConfigError(
            f"{source}: dataset: {', '.join(c.name for c in needs_images)} run on images, so the config needs a "
            "dataset (e.g. dataset: {plugin: image_folder, root: data/val})"
        )
    for c in backbones:
        if not isinstance(c.instance, (ImageBackbone, FeatureBackbone)):
            raise ConfigError(f"{source}: backbone {c.name}: plugin {c.plugin!r} does not build a backbone")
    for c in targets:
        if not isinstance(c.instance, (ImageTarget, EmbeddingTarget)):
            raise ConfigError(f"{source}: target {c.name}: plugin {c.plugin!r} does not build a target")
    visualizer = _build("visualizer", cfg.visualizer, "visualizer") if cfg.visualizer else None
    if visualizer is not None:
        check_visualizer(visualizer, targets, source)
    for context, component in built:
        check_component(context, component)
    check_labels(dataset, backbones, source)
    check_feature_dims(backbones, [("translator", translator)] + [
        (f"compare_translators[{i}]", t) for i, t in enumerate(compared)], source)
    check_cache_dir(cfg, source)
    return Plan(cfg, registry, dataset, targets, backbones, translator, compared, probes, reporters, source, visualizer)


def check_cache_dir(cfg: AuditConfig, source: str = "<config>") -> None:
    """The pre-flight of a ``run.cache_dir`` the config names: a file, a folder inside an
    output folder or holding this one, someone else's folder is a :class:`ConfigError` in
    ``validate`` as in ``run`` (nothing is created). A folder from the environment or the
    default is only warned about, by the run (:func:`~sing_audit.pipeline.sources.shared_store`)."""
    from .shared_cache import open_shared_cache, setting_of

    setting = setting_of(cfg)
    if setting.enabled and setting.source == "config":
        try:
            open_shared_cache(setting, cfg.output_dir, create=False)
        except ConfigError as exc:
            raise ConfigError(f"{source}: run.cache_dir: {exc}") from None


def check_labels(dataset: Component | None, backbones: list[Component], source: str = "<config>") -> None:
    """The pre-flight of the label mapping: the dataset's labels map to the classes each
    backbone's config declares (``Backbone.declared_classes``; no weights), by the rules
    the run uses (:func:`sing_audit.classmap.map_labels`). Unlabelled datasets, and
    backbones that declare nothing, are left to the run."""
    ds = dataset.instance if dataset is not None else None
    if not isinstance(ds, ImageDataset):
        return
    labels = {r.label for r in ds.records()}
    if not labels or None in labels:
        return
    for i, comp in enumerate(backbones):
        declared = getattr(comp.instance, "declared_classes", None)
        declared = declared() if declared is not None else None
        if declared is None:
            continue
        count, names, keys = declared
        head = LinearHead(np.zeros((count, 0)), None, 0.0, names, keys)
        try:
            map_labels(sorted(labels), head, ds.class_map(), ds.class_names())
        except DataError as exc:
            raise DataError(
                f"{source}: dataset: {exc} (the head of backbones[{i}] {comp.name!r}: {count} classes, as its "
                "model's config declares)"
            ) from exc


def check_feature_dims(backbones: list[Component], translators: list[tuple[str, Component]],
                       source: str = "<config>") -> None:
    """The pre-flight of the feature width: a translator that takes a fixed width
    (``Translator.input_dim``, e.g. a published SING translator's ``in_dim``) must get it
    from every backbone whose width is known before loading (``Backbone.declared_feature_dim``).
    A backbone that cannot tell without a forward pass (``None``) is left to the run, whose
    translator names the same mismatch; no error is raised on a guess."""
    wanted_dims = {}
    for where, comp in translators:
        wanted = getattr(comp.instance, "input_dim", None)
        m = wanted() if wanted is not None else None
        if m is not None:
            wanted_dims[where] = m
    if not wanted_dims:
        return  # no translator takes a fixed width: no backbone's width (a model built on meta) is needed
    widths = []
    for i, comp in enumerate(backbones):
        declared = getattr(comp.instance, "declared_feature_dim", None)
        dim = declared() if declared is not None else None
        if dim is not None:
            widths.append((i, comp, int(dim)))
    for where, comp in translators:
        m = wanted_dims.get(where)
        if m is None:
            continue
        for i, bcomp, dim in widths:
            if dim != int(m):
                hint = getattr(comp.instance, "input_hint", None)
                fix = hint() if hint is not None else "use a translator made for that backbone's features"
                raise ConfigError(
                    f"{source}: {where}: translator {comp.name!r} takes {m}-dimensional features (in_dim {m}), but "
                    f"backbones[{i}] {bcomp.name!r} gives {dim}-dimensional features; {fix}"
                )


def audit_identity(cfg: AuditConfig) -> str:
    """What makes two runs "the same audit" for an output folder: its inputs."""
    spec = cfg.model_dump(mode="json", include={"dataset", "target", "targets", "backbones"}, by_alias=True)
    return content_key("audit-identity", spec)
