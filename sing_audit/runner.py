"""Orchestration: config → components → features/embeddings → analysis → result → files.

The only place that touches devices, the cache, plugins and the output folder. The math
it calls is pure (``nullspace``, ``scores``, ``ridge``, ``stats``, ``analysis``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .analysis import (
    apply_policy,
    class_results,
    compare_models,
    audit_passed,
    fidelity_figures,
    judge_model,
    ratio,
    target_agreement,
    verdict_text,
    zero_shot_accuracy,
)
from .components import (
    EmbeddingTarget,
    FeatureBackbone,
    ImageBackbone,
    ImageDataset,
    ImageTarget,
    LinearHead,
    Target,
)
from .config import AuditConfig, load_config
from .errors import ConfigError, DataError, OutputWriteError, SingAuditError, WriterFailure
from .extraction import check_head_reproduces_logits, extract, resolve_device
from .host import BuildContext, Component, Registry, create_component, create_registry
from .terminal import suggest
from .nullspace import HeadSubspaces, null_energy, split_head
from .probes import ProbeContext, row_chunks
from .run_folder import RunFolder
from .results import (
    AuditResult,
    Fidelity,
    ImageEvidence,
    Interval,
    ModelResult,
    NullRemovalDrift,
    Provenance,
    SanityFigures,
    TranslatorComparison,
)
from .shard import Shard, merge_shards, shard_kind
from .stats import bootstrap_mean_ci, bootstrap_ratio_ci
from .store import ArrayStore, atomic_write_text, content_key, slug

__all__ = ["run_audit", "Plan", "build_plan", "audit_identity"]

log = logging.getLogger("sing_audit")


# --------------------------------------------------------------------------- plan


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


def _build(registry: Registry, kind: str, spec, where: str, cfg: AuditConfig, source: str, name: str | None = None) -> Component:
    return create_component(BuildContext(registry, cfg.base_dir, source, where), kind, spec, name or spec.plugin)


def build_plan(cfg: AuditConfig, registry: Registry, source: str = "<config>") -> Plan:
    """Validate every component's options and build the components."""
    dataset = _build(registry, "dataset", cfg.dataset, "dataset", cfg, source) if cfg.dataset else None
    targets = [
        _build(registry, "target", t, f"targets[{i}]" if cfg.targets else "target", cfg, source, t.name or t.plugin)
        for i, t in enumerate(cfg.target_specs())
    ]
    backbones = [_build(registry, "backbone", b, f"backbones[{i}]", cfg, source, b.name) for i, b in enumerate(cfg.backbones)]
    translator = _build(registry, "translator", cfg.translator, "translator", cfg, source)
    compared = [
        _build(registry, "translator", t, f"compare_translators[{i}]", cfg, source) for i, t in enumerate(cfg.compare_translators)
    ]
    probes = [_build(registry, "probe", p, f"probes[{i}]", cfg, source) for i, p in enumerate(cfg.probe_specs())]
    reporters: dict[str, Component] = {}
    available = registry.reporters_by_format()
    for i, fmt in enumerate(cfg.report.formats):
        if fmt not in available:
            raise ConfigError(f"{source}: report.formats[{i}]: unknown format {fmt!r}{suggest(fmt, list(available))}")
        reg = available[fmt]
        reporters[fmt] = Component("reporter", fmt, reg.name, reg.package, reg.factory(), None)
        reporters[fmt].instance.registry = registry
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
    visualizer = _build(registry, "visualizer", cfg.visualizer, "visualizer", cfg, source) if cfg.visualizer else None
    if visualizer is not None:
        from .visualize import check_visualizer

        check_visualizer(visualizer, targets, source)
    return Plan(cfg, registry, dataset, targets, backbones, translator, compared, probes, reporters, source, visualizer)


def audit_identity(cfg: AuditConfig) -> str:
    """What makes two runs "the same audit" for an output folder: its inputs."""
    spec = cfg.model_dump(mode="json", include={"dataset", "target", "targets", "backbones"}, by_alias=True)
    return content_key("audit-identity", spec)


# --------------------------------------------------------------------------- run log


@contextmanager
def _file_log(out: Path, name: str = "run.log"):
    """Log the run into ``out/logs/name``. An exception that ends the run is logged there
    too — with its traceback when it is a bug — and carries the log's path
    (``exc.sing_audit_log``) so the error message can point to it."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / name
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    previous = log.level
    log.setLevel(logging.INFO)
    try:
        yield path
    except KeyboardInterrupt:
        log.warning("interrupted")
        raise
    except SingAuditError as exc:
        log.error("run stopped: %s", exc)
        exc.sing_audit_log = path
        raise
    except Exception as exc:
        log.exception("internal error (a bug, not a verdict): %s: %s", exc.__class__.__name__, exc)
        exc.sing_audit_log = path
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
        log.setLevel(previous)


# --------------------------------------------------------------------------- sources


@dataclass
class FeatureSource:
    """One backbone's features on the audit's images."""

    name: str
    features: np.ndarray  # N×m
    ids: list[str] | None
    ok: np.ndarray | None  # per dataset record, for image backbones
    labels: np.ndarray | None  # head indices
    head: LinearHead
    class_names: list[str]
    random_weights: bool
    describe: dict[str, Any]
    component: Any = None  # the ImageBackbone, for probes that need the model and images


@dataclass
class EmbeddingSource:
    name: str
    embeddings: np.ndarray
    ids: list[str] | None
    ok: np.ndarray | None
    target: Target
    random_weights: bool
    describe: dict[str, Any]
    text_cache: dict[str, np.ndarray] = field(default_factory=dict)


class Runner:
    """Runs one audit's stages in the output folder ``folder`` (held by the caller).
    ``shard``: extract only that slice of the images into the store's shard entries (see
    :mod:`sing_audit.shard`); ``merge_only``: never extract, join the shards instead
    (``sing-audit merge``)."""

    def __init__(self, plan: Plan, folder: RunFolder | None = None, shard=None, merge_only: bool = False):
        self.plan = plan
        self.shard = shard
        self.merge_only = merge_only
        self.cfg = plan.config
        self.out = self.cfg.output_dir
        self.folder = folder
        # the folder is claimed when the run stores its first measurement (see RunFolder)
        self.store = ArrayStore(self.out / "cache", before_write=folder.claim if folder is not None else None)
        self.stage_seconds: dict[str, float] = {}
        self.device: str | None = None
        self.records = None
        self.dataset_info: dict[str, Any] | None = None
        self.skipped: list[str] = []
        self._loaded: set[int] = set()

    @contextmanager
    def stage(self, name: str):
        """Time a stage and log how it ended: "stage X: 1.23s" when it finished, "stage X:
        interrupted after 1.23s" on Ctrl-C, "stage X: failed after 1.23s (ErrorClass)" on an
        exception. Only finished stages count in ``stage_seconds`` (provenance): an
        unfinished stage's time is in the log, never reported as work done. The exception
        carries the stage it escaped from (:func:`sing_audit.stages.stage_exit`), so the
        CLI can name it."""
        from .stages import record_stage_exit

        start = time.perf_counter()
        log.info("stage %s: start", name)
        try:
            yield
        except BaseException as exc:
            elapsed = time.perf_counter() - start
            if isinstance(exc, KeyboardInterrupt):
                log.warning("stage %s: interrupted after %.2fs", name, elapsed)
            else:
                log.warning("stage %s: failed after %.2fs (%s)", name, elapsed, type(exc).__name__)
            record_stage_exit(exc, name, elapsed)
            raise
        elapsed = time.perf_counter() - start
        self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + elapsed
        log.info("stage %s: %.2fs", name, elapsed)

    def ensure_loaded(self, component) -> None:
        """Load a model once per run (only when something is not in the cache)."""
        if id(component) not in self._loaded:
            component.load(self.get_device())
            self._loaded.add(id(component))

    def image_loader(self, backbone, frows: np.ndarray):
        """``rows -> k×C×H×W`` tensor: the analysed images ``rows`` (indices into the
        aligned rows ``frows``) as ``backbone.features`` receives them."""
        import torch

        ds = self.plan.dataset.instance
        transform = backbone.transform()

        def images(rows) -> "torch.Tensor":
            picked = [self.records[int(frows[int(r)])] for r in np.atleast_1d(np.asarray(rows))]
            return torch.stack([transform(ds.open(rec)) for rec in picked]).to(self.get_device())

        return images

    def get_device(self) -> str:
        if self.device is None:
            self.device = resolve_device(self.cfg.run.device)
            local = getattr(self.shard, "local_rank", None)
            if local is not None and self.device == "cuda":
                self.device = f"cuda:{local}"  # one GPU per torchrun worker
        return self.device

    # ----------------------------------------------------------------- dataset

    def load_dataset(self) -> None:
        if self.plan.dataset is None:
            return
        ds: ImageDataset = self.plan.dataset.instance
        with self.stage("dataset"):
            self.records = ds.records()
            if not self.records:
                raise DataError("the dataset holds no images")
            self.dataset_info = ds.describe()

    def _dataset_key(self) -> dict[str, Any]:
        ds = self.plan.dataset.instance
        return {"dataset": self.dataset_info, "on_bad_image": getattr(ds, "on_bad_image", "fail")}

    def _precision_key(self) -> tuple:
        """Key parts for stored precision and autocast: empty at the defaults (old caches stay valid)."""
        from .extraction import effective_autocast

        run = self.cfg.run
        parts = []
        if run.store_dtype != "float32":
            parts.append({"store_dtype": run.store_dtype})
        if run.autocast != "none":
            applied = effective_autocast(self.get_device(), run.autocast)
            if applied != "none":
                parts.append({"autocast": applied})
        return tuple(parts)

    def _extract_to_store(self, kind: str, key: str, transform, forward, label: str, finish, check_first=None) -> None:
        """Stream ``forward`` over the dataset into a resumable partial entry, then commit it.

        ``finish()`` returns the entry's small arrays and metadata (called after extraction).
        """
        from .store import PartialEntry

        run = self.cfg.run
        records, shard_meta = self.records, {}
        if self.shard is not None:
            rows = self.shard.rows(len(self.records), run.batch_size)
            records = self.records[rows.start : rows.stop]
            kind, key = shard_kind(kind), self.shard.key(key)
            shard_meta = {"shard_rows": [rows.start, rows.stop], "shard_total": len(self.records)}
            if not records:  # more shards than batches: an empty shard still counts as done
                arrays, meta = finish()
                self.store.save(kind, key, {"values": np.zeros((0, 0), np.float32), "ok": np.zeros(0, bool), **arrays}, {**meta, **shard_meta})
                return
        sink = PartialEntry(
            self.store, kind, key, len(records), run.store_dtype,
            {"batch_size": run.batch_size, "ids": content_key([r.image_id for r in records])},
        )
        extract(
            records,
            self.plan.dataset.instance,
            transform,
            forward,
            device=self.get_device(),
            batch_size=run.batch_size,
            num_workers=run.num_workers,
            label=label,
            check_first=check_first,
            sink=sink,
            chunk_images=run.chunk_images,
            autocast=run.autocast,
        )
        arrays, meta = finish()
        sink.finalize(arrays, {**meta, **shard_meta})

    def _cached_or_merged(self, kind: str, key: str, label: str):
        """The entry ``key``: from the cache, or joined from a complete set of shards;
        ``None`` when it must be extracted (an error under ``merge_only``)."""
        hit = self.store.load(kind, key)
        if hit is not None or self.shard is not None:
            return hit
        if merge_shards(self.store, kind, key, len(self.records), label):
            return self.store.load(kind, key)
        if self.merge_only:
            raise DataError(
                f"{label}: no shard was extracted for this audit (or the config, data or weights changed since); "
                "run `sing-audit run CONFIG --shard i/N` for i = 0…N-1 first"
            )
        return None

    def _shard_done(self, kind: str, key: str) -> bool:
        return self.store.load(kind, key) is not None or (
            self.store.load(shard_kind(kind), self.shard.key(key)) is not None
        )

    # ----------------------------------------------------------------- targets

    def load_target(self, comp) -> EmbeddingSource | None:
        t = comp.instance
        if isinstance(t, EmbeddingTarget):
            table = t.load_embeddings()
            return EmbeddingSource(comp.name, np.asarray(table.image_embeddings), table.image_ids, None, t, t.random_weights, t.describe())
        desc = t.describe()
        # prompt templates shape text embeddings only: changing them keeps image embeddings
        image_desc = {k: v for k, v in desc.items() if k != "templates"}
        key = content_key("embeddings", image_desc, self._dataset_key(), *self._precision_key())
        if self.shard is not None:
            if not self._shard_done("embeddings", key):
                with self.stage("extract"):
                    self.ensure_loaded(t)
                    self._extract_to_store(
                        "embeddings", key, t.transform(), t.encode_images, f"target {comp.name} (shard {self.shard})",
                        finish=lambda: ({}, {"describe": t.describe()}),
                    )
            return None
        hit = self._cached_or_merged("embeddings", key, f"target {comp.name}")
        if hit is None:
            with self.stage("extract"):
                self.ensure_loaded(t)
                self._extract_to_store(
                    "embeddings", key, t.transform(), t.encode_images, f"target {comp.name}",
                    finish=lambda: ({}, {"describe": t.describe()}),
                )
                hit = self.store.load("embeddings", key)
        else:
            log.info("target %s: embeddings from cache %s", comp.name, key)
        arrays, meta = hit
        ids = [r.image_id for r in self.records]
        described = meta.get("describe", desc)
        random_weights = bool(described.get("random_weights", t.random_weights))
        return EmbeddingSource(comp.name, arrays["values"], ids, np.asarray(arrays["ok"]), t, random_weights, desc)

    def _chunked_text(self, src: EmbeddingSource):
        """The target's text encoder in resumable chunks (:mod:`sing_audit.text_stage`):
        chunks not in the cache are encoded inside the text stage, the model loaded first."""
        from .text_stage import ChunkedText

        t = src.target

        @contextmanager
        def computing():
            with self.stage("text"):
                self.ensure_loaded(t)
                yield

        return ChunkedText(self.store, src.describe, t.encode_text, computing, src.name)

    def text_encoder(self, src: EmbeddingSource):
        """``prompts -> K×n`` raw embeddings, cached on disk in chunks (a rerun after an
        interrupt encodes only the chunks not yet done); loads the target only on a miss."""
        t = src.target
        chunked = None if isinstance(t, EmbeddingTarget) else self._chunked_text(src)

        def encode(prompts: list[str]) -> np.ndarray:
            prompts = [str(p) for p in prompts]
            if chunked is None:
                return t.encode_text(prompts)  # raises: no text encoder
            return chunked.encode(prompts)

        return encode

    def class_text(self, src: EmbeddingSource, class_names: list[str]) -> np.ndarray:
        """c×n unit class embeddings (the template ensemble), cached. Encoded in resumable
        chunks of whole classes, each stored as it finishes and removed once the ensemble
        is stored; a target that defines its own ``class_text_embeddings`` is called once."""
        t = src.target
        if isinstance(t, EmbeddingTarget):
            return t.class_text_embeddings(class_names)
        key = content_key("text", src.describe, list(t.templates), class_names)
        if key in src.text_cache:
            return src.text_cache[key]
        hit = self.store.load("text", key, mmap=False)
        if hit is not None:
            emb = np.asarray(hit[0]["values"])
        elif type(t).class_text_embeddings is not Target.class_text_embeddings:
            with self.stage("text"):  # its own ensemble: nothing to chunk from outside
                self.ensure_loaded(t)
                emb = t.class_text_embeddings(class_names)
            self.store.save("text", key, {"values": emb})
        else:
            chunked = self._chunked_text(src)
            emb = chunked.class_ensemble(class_names, list(t.templates))
            self.store.save("text", key, {"values": emb})
            chunked.forget(chunked.class_chunks(class_names, list(t.templates)))
        src.text_cache[key] = emb
        return emb

    # ----------------------------------------------------------------- backbones

    def load_backbone(self, comp) -> FeatureSource | None:
        b = comp.instance
        if isinstance(b, FeatureBackbone):
            head = b.head()
            table = b.load_features()
            names = head.class_names or [f"class {i}" for i in range(head.num_classes)]
            return FeatureSource(comp.name, np.asarray(table.features), table.image_ids, None, table.labels, head, list(names), b.random_weights, b.describe())
        desc = b.describe()
        key = content_key("features", desc, self._dataset_key(), *self._precision_key())
        if self.shard is not None and self._shard_done("features", key):
            return None
        hit = self._cached_or_merged("features", key, f"backbone {comp.name}")
        if hit is None:
            with self.stage("extract"):
                self.ensure_loaded(b)
                head = b.head()
                check = check_head_reproduces_logits(b.features, b.logits, head.weight, head.bias, comp.name)

                def finish():
                    meta = {
                        "describe": b.describe(),  # after load: with the weights' digest
                        "weight_eps": head.weight_eps,
                        "class_names": head.class_names,
                        "class_keys": head.class_keys,
                        "random_weights": b.random_weights,
                    }
                    return {"head_weight": head.weight, "head_bias": head.bias}, meta

                self._extract_to_store(
                    "features", key, b.transform(), b.features, f"backbone {comp.name}", finish=finish, check_first=check
                )
                if self.shard is not None:
                    return None
                hit = self.store.load("features", key)
        else:
            log.info("backbone %s: features from cache %s", comp.name, key)
        arrays, meta = hit
        head = LinearHead(
            weight=np.asarray(arrays["head_weight"]),
            bias=np.asarray(arrays["head_bias"]),
            weight_eps=float(meta["weight_eps"]),
            class_names=meta.get("class_names"),
            class_keys=meta.get("class_keys"),
        )
        labels, names = self._map_labels(comp.name, head)
        ids = [r.image_id for r in self.records]
        return FeatureSource(
            comp.name, arrays["values"], ids, np.asarray(arrays["ok"]), labels, head, names,
            bool(meta.get("random_weights")), meta.get("describe", desc), component=b,
        )

    def _map_labels(self, name: str, head: LinearHead) -> tuple[np.ndarray | None, list[str]]:
        from .classmap import map_labels

        ds = self.plan.dataset.instance
        raw = [r.label for r in self.records]
        if all(lab is None for lab in raw):
            names = head.class_names or [f"class {i}" for i in range(head.num_classes)]
            return None, list(names)
        if any(lab is None for lab in raw):
            missing = [r.image_id for r in self.records if r.label is None][:3]
            raise DataError(f"some images have labels and some do not (e.g. {', '.join(missing)}); label all or none")
        mapping = map_labels(sorted(set(raw)), head, ds.class_map(), ds.class_names())
        labels = np.array([mapping.label_to_index[lab] for lab in raw], dtype=np.int64)
        return labels, list(mapping.class_names)


# --------------------------------------------------------------------------- alignment


def _align(fsrc: FeatureSource, esrc: EmbeddingSource) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Row indices into the features and into the embeddings for the images both have."""
    if fsrc.ok is not None and esrc.ok is not None:
        rows = np.flatnonzero(fsrc.ok & esrc.ok)
        return rows, rows, [fsrc.ids[i] for i in rows] if fsrc.ids else None
    nf, ne = fsrc.features.shape[0], esrc.embeddings.shape[0]
    if fsrc.ids is not None and esrc.ids is not None:
        pos = {k: i for i, k in enumerate(esrc.ids)}
        missing = [k for k in fsrc.ids if k not in pos]
        if missing:
            raise DataError(
                f"backbone {fsrc.name} and target {esrc.name} disagree on image_ids: {len(missing)} of the "
                f"backbone's images have no embedding (e.g. {', '.join(missing[:3])})"
            )
        frows = np.arange(nf) if fsrc.ok is None else np.flatnonzero(fsrc.ok)
        erows = np.array([pos[fsrc.ids[i]] for i in frows], dtype=np.int64)
        if esrc.ok is not None:
            keep = esrc.ok[erows]
            frows, erows = frows[keep], erows[keep]
        return frows, erows, [fsrc.ids[i] for i in frows]
    if nf != ne:
        raise DataError(
            f"backbone {fsrc.name} has {nf} feature rows but target {esrc.name} has {ne} embeddings; rows must "
            "align (give both files image_ids to align them by id)"
        )
    rows = np.arange(nf)
    ids = fsrc.ids or esrc.ids
    return rows, rows, ids


def _check_finite(values: np.ndarray, what: str, ids: list[str] | None) -> None:
    for rows in row_chunks(values.shape[0]):
        bad = ~np.isfinite(np.asarray(values[rows])).all(axis=1)
        if bad.any():
            i = rows.start + int(np.flatnonzero(bad)[0])
            which = ids[i] if ids else f"row {i}"
            raise DataError(f"{what} has NaN or Inf values (first at image {which}); the model or file is broken")


# --------------------------------------------------------------------------- translators


def _translator_state_path(root: Path, key: str, k: int) -> Path:
    return root / "translators" / key / f"fold{k}.safetensors"


def cross_fit(runner: Runner, comp, features: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, key_parts: dict):
    """Fit one translator per fold on the other folds; reuse saved ones when nothing changed.

    Every translator of an audit (the primary and the compared ones) uses the same folds.
    """
    from safetensors.numpy import load_file, save

    from .ridge import cross_fit_folds
    from .store import atomic_write_bytes

    cfg = runner.cfg
    folds = cross_fit_folds(labels, features.shape[0], cfg.run.folds, cfg.run.seed)
    key = content_key("translator", key_parts, comp.plugin, comp.options.model_dump(mode="json") if comp.options else None, cfg.run.folds, cfg.run.seed)
    translators = []
    root = runner.out / "cache"
    factory = runner.plan.registry.get("translator", comp.plugin).factory
    together = None
    if not all(_translator_state_path(root, key, k).is_file() for k in range(cfg.run.folds)):
        # every fold at once where the family shares work between folds (e.g. ridge sums)
        together = factory(comp.options).fit_folds(features, np.asarray(embeddings, dtype=np.float64), folds, labels)
    for k in range(cfg.run.folds):
        train = folds != k
        t = together[k] if together is not None else factory(comp.options)
        path = _translator_state_path(root, key, k)
        loaded = False
        if path.is_file():
            try:
                t.load_state(load_file(str(path)))
                loaded = True
            except Exception:  # noqa: BLE001 - a corrupt or stale file is refitted
                log.warning("translator state %s unreadable; refitting", path)
        if not loaded:
            if together is None:
                # the training rows in their stored dtype (translators convert to float64 as they read;
                # the linear one a row chunk at a time): no float64 copy of the features
                t.fit(np.asarray(features[train]), np.asarray(embeddings[train], dtype=np.float64), labels[train])
            state = t.state()
            if state:
                meta = {"key": key, "fold": str(k), "plugin": comp.plugin, "info": json.dumps(t.info(), default=str)}
                atomic_write_bytes(path, save({n: np.ascontiguousarray(v) for n, v in state.items()}, metadata=meta))
        translators.append(t)
    return folds, translators


@dataclass
class CrossFitted:
    """One translator family cross-fitted on a model's features."""

    folds: np.ndarray
    translators: list
    translated: np.ndarray  # N×n held-out T(f)
    fidelity: dict[str, float]
    null_energy: float | None
    params: dict[str, list]
    normalized: bool
    linear: bool

    def translate(self, changed: np.ndarray, rows) -> np.ndarray:
        fold_rows = self.folds[rows]
        out = np.empty((changed.shape[0], self.translated.shape[1]))
        for k in np.unique(fold_rows):
            sel = fold_rows == k
            out[sel] = self.translators[k].predict(changed[sel])
        return out


def fit_family(runner: Runner, comp, feats, emb, labels, key_parts, sub: HeadSubspaces, target_name: str) -> CrossFitted:
    from .scores import unit_rows

    folds, translators = cross_fit(runner, comp, feats, emb, labels, key_parts)
    translated = np.empty((feats.shape[0], emb.shape[1]))
    for chunk in row_chunks(feats.shape[0]):  # held-out T(f), a row chunk at a time
        f = np.asarray(feats[chunk])
        fold_rows = folds[chunk]
        part = translated[chunk]
        for k in np.unique(fold_rows):
            sel = fold_rows == k
            out = translators[k].predict(f[sel])
            if out.ndim != 2 or out.shape[1] != emb.shape[1]:
                raise DataError(
                    f"translator {comp.plugin} outputs {out.shape[-1]} dimensions but target {target_name} has {emb.shape[1]}"
                )
            part[sel] = out
    normalized = bool(getattr(translators[0], "normalized_targets", False))
    fid = fidelity_figures(translated, unit_rows(emb) if normalized else emb)
    maps = [t.linear_map() for t in translators]
    t_null = None
    if all(m is not None for m in maps):
        ratios = []
        for a, _ in maps:
            total = np.linalg.norm(a)
            ratios.append(float(np.linalg.norm(a @ sub.null) / total) if total > 0 else 0.0)
        t_null = float(np.mean(ratios))
    params: dict[str, list] = {}
    for t in translators:
        for p, v in t.info().items():
            params.setdefault(p, []).append(v)
    linear = all(m is not None for m in maps)
    return CrossFitted(folds, translators, translated, fid, t_null, params, normalized, linear)


def _compare_family(runner: Runner, comp, feats, emb, labels, key_parts, sub, target_name, text) -> TranslatorComparison:
    """Fidelity and null-removal scores of another translator family on the same folds."""
    from .nullspace import remove_null
    from .scores import attribute_scores_toward, image_scores

    fam = fit_family(runner, comp, feats, emb, labels, key_parts, sub, target_name)
    is_parts, as_parts = [], []
    for rows in row_chunks(feats.shape[0]):
        if sub.null_dim == 0:
            removed_t = fam.translated[rows]
        else:
            removed_t = fam.translate(remove_null(feats[rows], sub), rows)
        is_parts.append(image_scores(fam.translated[rows], removed_t))
        as_parts.append(attribute_scores_toward(fam.translated[rows], removed_t, text, labels[rows]))
    is_all, as_all = np.concatenate(is_parts), np.concatenate(as_parts)
    return TranslatorComparison(
        translator=comp.plugin,
        linear=fam.linear,
        params=fam.params,
        null_energy=fam.null_energy,
        is_mean=float(np.mean(is_all)),
        as_abs_mean=float(np.mean(np.abs(as_all))),
        **fam.fidelity,
    )


# --------------------------------------------------------------------------- analysis of one model


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
    primary: "CrossFitted"


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


def _head_subspaces(runner: Runner, head: LinearHead, label: str) -> HeadSubspaces:
    """``split_head`` under the configured rule, cached in the store by the weight's bytes
    (a c×m SVD in float64 costs seconds; a rerun with nothing changed reads it back)."""
    import hashlib

    ns = runner.cfg.nullspace
    weight = np.ascontiguousarray(head.weight)
    params = {"rule": ns.rule, "rtol": ns.rtol, "weight_eps": head.weight_eps, "keep": ns.keep, "rank": ns.rank, "null_fraction": ns.null_fraction}
    key = content_key("subspaces", hashlib.sha256(weight.tobytes()).hexdigest(), weight.dtype.str, weight.shape, params)
    hit = runner.store.load("subspaces", key, mmap=False)
    if hit is not None:
        arrays, meta = hit
        return HeadSubspaces(
            principal=arrays["principal"], null=arrays["null"], singular_values=arrays["singular_values"],
            rule=meta["rule"], rank=int(meta["rank"]), tolerance=meta["tolerance"],
        )
    try:
        sub = split_head(
            head.weight, ns.rule, rtol=ns.rtol, weight_eps=head.weight_eps, keep=ns.keep, rank=ns.rank,
            null_fraction=ns.null_fraction,
        )
    except ValueError as exc:
        raise ConfigError(f"nullspace: {label}: {exc}") from exc
    runner.store.save(
        "subspaces", key, {"principal": sub.principal, "null": sub.null, "singular_values": sub.singular_values},
        {"rule": sub.rule, "rank": sub.rank, "tolerance": sub.tolerance},
    )
    return sub


def prepare_model(runner: Runner, fsrc: FeatureSource, esrc: EmbeddingSource) -> ModelInputs:
    """Align, check, split the head, embed the class prompts and cross-fit the translator."""
    frows, erows, ids = _align(fsrc, esrc)
    if frows.size == 0:
        raise DataError(f"backbone {fsrc.name} and target {esrc.name} share no image")
    # the stored rows as they are (memory-mapped float32/float16): every consumer reads
    # them in row chunks converted to float64, so no float64 copy of all features exists
    feats = _aligned_rows(fsrc.features, frows)
    emb = _aligned_rows(esrc.embeddings, erows)
    head = fsrc.head
    label = f"backbone {fsrc.name}"
    _check_finite(feats, f"{label}: features", ids)
    _check_finite(emb, f"target {esrc.name}: image embeddings", ids)
    if feats.shape[1] != head.num_features:
        raise DataError(f"{label}: features have {feats.shape[1]} dimensions but the head expects {head.num_features}")
    sub = _head_subspaces(runner, head, label)
    predicted = _predicted_classes(feats, head)
    if fsrc.labels is not None:
        labels = np.asarray(fsrc.labels)[frows]
        if labels.min() < 0 or labels.max() >= head.num_classes:
            raise DataError(f"{label}: labels must be head indices in [0, {head.num_classes}), got {labels.min()}..{labels.max()}")
        labels_source = "labels"
    else:
        labels = predicted
        labels_source = "predicted"
    text = runner.class_text(esrc, fsrc.class_names)
    if text.shape[1] != emb.shape[1]:
        raise DataError(f"target {esrc.name}: text embeddings have {text.shape[1]} dimensions, image embeddings {emb.shape[1]}")

    with runner.stage("translator"):
        key_parts = {
            "backbone": fsrc.describe,
            "target": esrc.describe,
            "rows": content_key(ids if ids is not None else int(feats.shape[0])),
            "labels": content_key(labels.tolist()),
        }
        primary = fit_family(runner, runner.plan.translator, feats, emb, labels, key_parts, sub, esrc.name)
        if not primary.linear:
            raise ConfigError(
                f"translator {runner.plan.translator.plugin!r} is not linear: the verdict and the fidelity gate rest on "
                "a linear translator, because equivalent features of a nonlinear one lie off the data it was fitted on; "
                "keep translator: linear and list nonlinear families under compare_translators"
            )
    return ModelInputs(feats, emb, frows, ids, labels, labels_source, predicted, head, sub, text, key_parts, primary)


def analyse(runner: Runner, fsrc: FeatureSource, esrc: EmbeddingSource) -> tuple[ModelResult, dict[str, np.ndarray]]:
    cfg = runner.cfg
    mi = prepare_model(runner, fsrc, esrc)
    feats, emb, frows, ids, labels = mi.feats, mi.emb, mi.frows, mi.ids, mi.labels
    labels_source, predicted, head, sub, text = mi.labels_source, mi.predicted, mi.head, mi.sub, mi.text
    key_parts, primary = mi.key_parts, mi.primary
    with runner.stage("translator"):
        comparisons = [
            _compare_family(runner, comp, feats, emb, labels, key_parts, sub, esrc.name, text)
            for comp in runner.plan.compare_translators
        ]
    folds, translators, translated = primary.folds, primary.translators, primary.translated
    fid, t_null, params, normalized = primary.fidelity, primary.null_energy, primary.params, primary.normalized
    translate = primary.translate

    generator = np.random.default_rng(cfg.run.seed)
    ctx = ProbeContext(
        model_name=fsrc.name,
        backbone_name=fsrc.name,
        target_name=esrc.name,
        features=feats,
        labels=labels,
        head=head,
        subspaces=sub,
        embeddings=emb,
        translated=translated,
        class_text=text,
        class_names=fsrc.class_names,
        folds=folds,
        translate=translate,
        target=esrc.target,
        generator=generator,
        image_ids=ids or [],
        translators=translators,
        encode_text=runner.text_encoder(esrc),
        registry=runner.plan.registry,
    )
    if fsrc.component is not None and any(p.instance.needs_backbone for p in runner.plan.probes):
        runner.ensure_loaded(fsrc.component)
        ctx.backbone = fsrc.component
        ctx.images = runner.image_loader(fsrc.component, mi.frows)
    if any(p.instance.needs_target for p in runner.plan.probes) and isinstance(esrc.target, ImageTarget):
        runner.ensure_loaded(esrc.target)
    columns: dict[str, np.ndarray] = {}
    probe_summaries: dict[str, dict[str, Any]] = {}
    scores = None
    with runner.stage("probes"):
        for comp in runner.plan.probes:
            out = comp.instance.run(ctx)
            for col, values in out.per_image.items():
                columns[col if comp.plugin == "null_removal" else f"{comp.plugin}.{col}"] = values
            probe_summaries[comp.plugin] = out.summary
            if out.scores is not None and scores is None:
                scores = out.scores
    if scores is None:
        raise ConfigError("no probe produced image and attribute scores; include null_removal in probes")

    with runner.stage("statistics"):
        classes = class_results(labels, fsrc.class_names, scores.image_score, scores.attribute_score, scores.attribute_contrast, generator, cfg.run.bootstrap)
        outcome = apply_policy(fsrc.name, classes, cfg.policy)
        abs_as = np.abs(scores.attribute_score)
        ci_is = bootstrap_mean_ci(scores.image_score, generator, cfg.run.bootstrap)
        ci_abs = bootstrap_mean_ci(abs_as, generator, cfg.run.bootstrap)
        ratio_ci = (
            bootstrap_ratio_ci(scores.image_score, abs_as, generator, cfg.run.bootstrap)
            if sub.null_dim > 0
            else (None, None)
        )
    is_mean = float(np.mean(scores.image_score))
    as_abs_mean = float(np.mean(abs_as))
    nr = probe_summaries.get("null_removal", {})
    top_images = _top_images(runner, ids, labels, fsrc.class_names, scores, cfg.report.top_images)
    if runner.plan.visualizer is not None and top_images:
        from .visualize import render_evidence

        with runner.stage("visualizer"):
            probe_summaries["renderings"] = render_evidence(runner, runner.plan.visualizer, ctx, top_images)
    random_parts = [p for p, r in ((f"backbone {fsrc.name}", fsrc.random_weights), (f"target {esrc.name}", esrc.random_weights)) if r]
    has_labels = labels_source == "labels"
    measured = ModelResult(
        name=fsrc.name,
        backbone=fsrc.name,
        target=esrc.name,
        random_weights=bool(random_parts),
        random_weights_parts=random_parts,
        rank_rule=sub.rule,
        rank=sub.rank,
        null_dim=sub.null_dim,
        num_features=sub.num_features,
        num_classes=head.num_classes,
        # row chunks: null_energy works in float64, which must not copy every feature at once
        null_energy=float(np.mean(np.concatenate([null_energy(feats[r], sub) for r in row_chunks(feats.shape[0])]))),
        n_images=int(feats.shape[0]),
        labels_source=labels_source,
        is_mean=is_mean,
        is_ci=Interval(low=ci_is.low, high=ci_is.high),
        as_mean=float(np.mean(scores.attribute_score)),
        as_abs_mean=as_abs_mean,
        as_abs_ci=Interval(low=ci_abs.low, high=ci_abs.high),
        as_contrast_mean=float(np.nanmean(scores.attribute_contrast)) if np.isfinite(scores.attribute_contrast).any() else None,
        is_as_ratio=ratio(is_mean, as_abs_mean, sub.null_dim),
        is_as_ratio_ci=Interval(low=ratio_ci[0], high=ratio_ci[1]),
        logit_drift=NullRemovalDrift(
            relative_max=nr.get("logit_drift_relative_max"),
            relative_mean=nr.get("logit_drift_relative_mean"),
            prediction_agreement=nr.get("prediction_agreement"),
        ),
        fidelity=Fidelity(
            folds=cfg.run.folds,
            translator=runner.plan.translator.plugin,
            params=params,
            null_energy=t_null,
            normalized_targets=normalized,
            **fid,
        ),
        sanity=SanityFigures(
            classifier_top1=float(np.mean(predicted == labels)) if has_labels else None,
            target_zero_shot=zero_shot_accuracy(emb, text, labels) if has_labels else None,
            translator_zero_shot=zero_shot_accuracy(translated, text, labels) if has_labels else None,
        ),
        translator_comparison=comparisons,
        n_flagged=outcome.n_flagged,
        n_waived=outcome.n_waived,
        n_outliers=outcome.n_outliers,
        n_judged=outcome.n_judged,
        outliers_computed=outcome.outliers_computed,
        flagged_classes=outcome.flagged_names,
        classes=classes,
        probes=probe_summaries,
        top_images=top_images,
        files={"images_csv": f"models/{slug(fsrc.name)}__{slug(esrc.name)}/images.csv"},
        weights_digest=fsrc.describe.get("weights_digest") or fsrc.describe.get("digest"),
    )
    result = judge_model(measured, cfg.policy)
    per_image = {
        "image_id": np.array(ids if ids is not None else [str(i) for i in frows], dtype=object),
        "label": labels,
        "class_name": np.array([fsrc.class_names[i] for i in labels], dtype=object),
        "predicted": predicted,
        "fold": folds,
        **columns,
        # the stamp every output carries: a spreadsheet of random-weight numbers says so on every row
        "random_weights": np.full(labels.shape[0], "RANDOM WEIGHTS" if result.random_weights else "no", dtype=object),
    }
    return result, per_image


# --------------------------------------------------------------------------- evidence


THUMBNAIL_PX = 112


def _top_images(runner: Runner, ids, labels, class_names, scores, k: int) -> list[ImageEvidence]:
    """The ``k`` images with the largest |AS|, with thumbnails when the images are at hand."""
    if k == 0 or labels.size == 0:
        return []
    order = np.argsort(-np.abs(np.nan_to_num(scores.attribute_score)), kind="stable")[:k]
    records = {r.image_id: r for r in runner.records} if runner.records is not None else {}
    out = []
    for i in order:
        image_id = ids[i] if ids is not None else str(i)
        thumb = _thumbnail(runner, records.get(image_id)) if records else None
        out.append(
            ImageEvidence(
                image_id=image_id,
                label=int(labels[i]),
                class_name=class_names[int(labels[i])],
                as_score=float(scores.attribute_score[i]),
                is_score=float(scores.image_score[i]),
                as_contrast=float(scores.attribute_contrast[i]),
                thumbnail=thumb,
            )
        )
    return out


def _thumbnail(runner: Runner, record) -> str | None:
    """Write a small JPEG of one dataset image into the output folder (once)."""
    if record is None:
        return None
    import hashlib

    from .errors import DataError as _DataError

    rel = f"thumbnails/{hashlib.sha256(record.image_id.encode()).hexdigest()[:20]}.jpg"
    path = runner.out / rel
    if path.is_file():
        return rel
    try:
        img = runner.plan.dataset.instance.open(record)
    except _DataError:
        return None
    img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    from .store import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
    return rel


# --------------------------------------------------------------------------- files


def _csv_text(columns: dict[str, np.ndarray]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    names = list(columns)
    writer.writerow(names)
    n = len(next(iter(columns.values())))
    for i in range(n):
        row = []
        for name in names:
            v = columns[name][i]
            if isinstance(v, (float, np.floating)):
                row.append("" if not np.isfinite(v) else repr(float(v)))
            elif isinstance(v, (np.integer,)):
                row.append(int(v))
            else:
                row.append(_csv_safe(str(v)))
        writer.writerow(row)
    return buf.getvalue()


def _csv_safe(text: str) -> str:
    """Neutralise spreadsheet formula injection in user-controlled text."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _versions() -> dict[str, str]:
    out = {"sing-audit": __version__, "python": platform.python_version()}
    for dist in ("torch", "torchvision", "timm", "open_clip_torch", "numpy", "scikit-learn", "pydantic", "pluggy", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------- entry point


def _json_reporter(registry: Registry) -> Component:
    """results.json is the contract: written even when report.formats leaves json out."""
    reg = registry.reporters_by_format().get("json")
    if reg is None:
        raise ConfigError("no installed reporter writes the json format (results.json)")
    return Component("reporter", "json", reg.name, reg.package, reg.factory(), None)


@dataclass
class ShardReport:
    """What ``run_shard`` extracted."""

    shard: Shard
    rows: range
    n_images: int
    components: list[str]
    output: Path


def run_shard(config, shard: Shard, *, force: bool = False, overrides: list[str] | None = None,
              registry: Registry | None = None, wait: float | None = None, notify=None) -> ShardReport:
    """Extract one shard's features and embeddings into the store (no analysis)."""
    source = str(config) if isinstance(config, (str, Path)) else "<config>"
    cfg = load_config(config, overrides)
    plan = build_plan(cfg, registry or create_registry(), source)
    out = cfg.output_dir
    with RunFolder(out, audit_identity(cfg), force=force, shared=True, wait=wait, notify=notify) as folder, \
            _file_log(out, f"shard-{shard.index}-of-{shard.count}.log"):
        for note in folder.notes:
            log.warning("%s", note)
        runner = Runner(plan, folder, shard=shard)
        runner.load_dataset()
        names = []
        for comp in plan.targets:
            if isinstance(comp.instance, ImageTarget):
                runner.load_target(comp)
                names.append(f"target {comp.name}")
        for comp in plan.backbones:
            if isinstance(comp.instance, ImageBackbone):
                runner.load_backbone(comp)
                names.append(f"backbone {comp.name}")
        n = len(runner.records) if runner.records is not None else 0
        rows = shard.rows(n, cfg.run.batch_size)
        log.info("shard %s: rows %d-%d of %d extracted for %s", shard, rows.start, rows.stop, n, ", ".join(names) or "nothing")
    return ShardReport(shard, rows, n, names, out)


def run_audit(config, *, force: bool = False, overrides: list[str] | None = None, registry: Registry | None = None,
              merge_only: bool = False, wait: float | None = None, notify=None) -> AuditResult:
    """Run an audit end to end and write its files; return the typed result.

    ``merge_only``: join the shards extracted by ``run_shard`` instead of extracting
    anything (``sing-audit merge``); a missing shard is a :class:`DataError`. Without it a
    complete set of shards is joined too, and whatever is missing is extracted.

    The output folder is locked for the run (``wait``: seconds to wait for another run
    that holds it, ``-1`` for as long as it takes; ``None``: refuse at once). results.json
    is written first; when another output fails, :class:`~sing_audit.errors.OutputWriteError`
    carries the result and says what is in place and how to regenerate the rest."""
    source = str(config) if isinstance(config, (str, Path)) else "<config>"
    cfg = load_config(config, overrides)
    registry = registry or create_registry()
    plan = build_plan(cfg, registry, source)
    out = cfg.output_dir
    started = dt.datetime.now(dt.timezone.utc)
    with RunFolder(out, audit_identity(cfg), force=force, wait=wait, notify=notify) as folder, _file_log(out) as log_path:
        log.info("sing-audit %s: audit %s into %s", __version__, cfg.name or source, out)
        for note in folder.notes:
            log.warning("%s", note)
        runner = Runner(plan, folder, merge_only=merge_only)
        runner.load_dataset()
        esources = [runner.load_target(t) for t in plan.targets]
        models: list[ModelResult] = []
        abs_as: dict[tuple[str, str], np.ndarray] = {}
        per_image_files: dict[str, str] = {}
        for comp in plan.backbones:
            fsrc = runner.load_backbone(comp)
            for esrc in esources:
                folder.claim()  # measuring from here on (the analysis writes what it computes)
                result, per_image = analyse(runner, fsrc, esrc)
                rel = result.files["images_csv"]
                atomic_write_text(out / rel, _csv_text(per_image))
                folder.record(rel)
                abs_as[(result.name, result.target)] = np.abs(np.asarray(per_image["as"], dtype=np.float64))
                per_image_files[f"{result.name}@{result.target}"] = rel
                models.append(result)
            if runner.records is not None and fsrc.ok is not None:
                runner.skipped = sorted(set(runner.skipped) | {runner.records[i].image_id for i in np.flatnonzero(~fsrc.ok)})
        for esrc in esources:
            if runner.records is not None and esrc.ok is not None:
                runner.skipped = sorted(set(runner.skipped) | {runner.records[i].image_id for i in np.flatnonzero(~esrc.ok)})
        result = _audit_result(cfg, plan, runner, models, abs_as, source, started)
        result = result.model_copy(update={"files": {
            "config": "config.resolved.yaml",
            "log": str(log_path.relative_to(out)),
            **{f"images:{k}": v for k, v in per_image_files.items()},
            "json": "results.json",
        }})
        result = _write_outputs(result, plan, registry, folder)
        log.info("verdict: %s", result.verdict)
    return result


def _audit_result(cfg: AuditConfig, plan: Plan, runner: Runner, models: list[ModelResult], abs_as, source: str,
                  started: dt.datetime) -> AuditResult:
    """The audit's typed result from its models' results (pure but for the clock)."""
    passed = audit_passed(models, cfg.policy)
    comparisons = []
    generator = np.random.default_rng(cfg.run.seed)
    for i, ma in enumerate(models):
        for mb in models[i + 1 :]:
            if ma.target == mb.target:
                comparisons.append(
                    compare_models(
                        ma.target, ma.name, abs_as[(ma.name, ma.target)], mb.name, abs_as[(mb.name, mb.target)],
                        generator, cfg.run.bootstrap,
                    )
                )
    aggregates = {}
    for comp in plan.probes:
        summaries = {f"{m.name}@{m.target}": m.probes.get(comp.plugin, {}) for m in models}
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
            versions=_versions(),
            components=components,
            dataset=runner.dataset_info,
            seed=cfg.run.seed,
            stage_seconds={k: round(v, 3) for k, v in runner.stage_seconds.items()},
            skipped_images=runner.skipped,
            started=started.isoformat(timespec="seconds"),
            finished=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        ),
    )


def _write_outputs(result: AuditResult, plan: Plan, registry: Registry, folder: RunFolder) -> AuditResult:
    """Write results.json first, then every other configured output.

    A writer that fails does not stop the others: each failure is logged (with its
    traceback) and collected, and :class:`OutputWriteError` is raised at the end with the
    result, once everything that could be written is in place. results.json is rewritten
    (atomically) at the end to name the files the reporters wrote."""
    import yaml

    out = folder.path
    folder.remove_stale_outputs()
    atomic_write_text(out / "config.resolved.yaml", yaml.safe_dump(result.provenance.config, sort_keys=False))
    folder.record("config.resolved.yaml")
    reporters = dict(plan.reporters)
    json_reporter = reporters.pop("json", None) or _json_reporter(registry)
    json_reporter.instance.write(result, out, "json")
    folder.record("results.json")
    files = dict(result.files)
    failures: list[WriterFailure] = []
    for fmt, comp in reporters.items():
        try:
            written = comp.instance.write(result, out, fmt)
        except Exception as exc:  # noqa: BLE001 - collected and re-raised below with the result
            log.error("output %s (reporter %r from %s) failed", fmt, comp.plugin, comp.package, exc_info=True)
            failures.append(WriterFailure(fmt, comp.plugin, comp.package, exc))
            continue
        for path in written:
            rel = Path(path).resolve().relative_to(out.resolve()).as_posix()
            folder.record(rel)
            files[fmt] = rel
    if files != result.files:
        result = result.model_copy(update={"files": files})
        json_reporter.instance.write(result, out, "json")
    if failures:
        raise OutputWriteError(result, failures, out, [f for f in folder.written])
    return result
