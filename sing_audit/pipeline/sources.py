"""Sources: the dataset, each backbone's features and each target's image embeddings,
from the content-keyed cache, joined from shards, or extracted (and stored) on a miss."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..classmap import map_labels
from ..components import EmbeddingTarget, FeatureBackbone, ImageDataset, LinearHead, Target
from ..errors import ConfigError, DataError
from ..store import content_key
from .cache import ArrayStore, PartialEntry
from .devices import ModelLoader
from .extraction import check_head_reproduces_logits, effective_autocast, extract
from .plan import Plan
from .shard import Shard, merge_shards, shard_kind
from .stages import StageClock

__all__ = ["EmbeddingSource", "FeatureSource", "Sources", "shared_store"]

log = logging.getLogger("sing_audit")


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
    """One target's image embeddings on the audit's images."""

    name: str
    embeddings: np.ndarray
    ids: list[str] | None
    ok: np.ndarray | None
    target: Target
    random_weights: bool
    describe: dict[str, Any]


class Sources:
    """Loads an audit's sources into ``store``. ``shard``: extract only that slice of the
    images into the store's shard entries (see :mod:`sing_audit.pipeline.shard`) and
    return ``None``; ``merge_only``: never extract, join the shards instead
    (``sing-audit merge``)."""

    def __init__(self, plan: Plan, store: ArrayStore, clock: StageClock, loader: ModelLoader,
                 shard: Shard | None = None, merge_only: bool = False):
        self.plan, self.store, self.clock, self.loader = plan, store, clock, loader
        self.run = plan.config.run
        self.shard = shard
        self.merge_only = merge_only
        self.records = None
        self.dataset_info: dict[str, Any] | None = None

    @classmethod
    def create(cls, plan: Plan, before_write=None, shard: Shard | None = None, merge_only: bool = False) -> "Sources":
        """The sources of ``plan`` in its output folder's cache, with a stage clock and a
        model loader of their own; ``before_write``: called before the store's first write
        (the run folder's claim). The store has the cache shared across audits behind it
        unless that is off (:func:`shared_store`)."""
        store = shared_store(plan.config, before_write)
        loader = ModelLoader(plan.config.run.device, getattr(shard, "local_rank", None),
                             channels_last=plan.config.run.channels_last)
        return cls(plan, store, StageClock(), loader, shard=shard, merge_only=merge_only)

    def log_shared(self) -> None:
        """Say in the log how many entries came from the shared cache (the run's provenance)."""
        taken = getattr(self.store, "from_shared", None)
        if taken:
            log.info("%d entries from the shared cache %s", len(taken), self.store.shared.root)

    # ----------------------------------------------------------------- dataset

    def load_dataset(self) -> None:
        if self.plan.dataset is None:
            return
        ds: ImageDataset = self.plan.dataset.instance
        with self.clock.stage("dataset"):
            self.records = ds.records()
            if not self.records:
                raise DataError("the dataset holds no images")
            self.dataset_info = ds.describe()

    def _dataset_key(self) -> dict[str, Any]:
        ds = self.plan.dataset.instance
        return {"dataset": self.dataset_info, "on_bad_image": getattr(ds, "on_bad_image", "fail")}

    def _precision_key(self) -> tuple:
        """Key parts for stored precision, autocast and channels_last (which may change the
        last bits): empty at the defaults (old caches stay valid)."""
        parts = []
        if self.run.store_dtype != "float32":
            parts.append({"store_dtype": self.run.store_dtype})
        if self.run.autocast != "none":
            applied = effective_autocast(self.loader.device, self.run.autocast)
            if applied != "none":
                parts.append({"autocast": applied})
        if self.run.channels_last:
            parts.append({"channels_last": True})
        return tuple(parts)

    # ----------------------------------------------------------------- the store

    def _extract_to_store(self, kind: str, key: str, transform, forward, label: str, finish, check_first=None) -> None:
        """Stream ``forward`` over the dataset into a resumable partial entry, then commit it.

        ``finish()`` returns the entry's small arrays and metadata (called after extraction).
        """
        run = self.run
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
            device=self.loader.device,
            batch_size=run.batch_size,
            num_workers=run.num_workers,
            label=label,
            check_first=check_first,
            sink=sink,
            chunk_images=run.chunk_images,
            autocast=run.autocast,
            decode_threads=run.decode_threads,
            channels_last=run.channels_last,
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
                with self.clock.stage("extract"):
                    self.loader.ensure_loaded(t)
                    self._extract_to_store(
                        "embeddings", key, t.transform(), t.encode_images, f"target {comp.name} (shard {self.shard})",
                        finish=lambda: ({}, {"describe": t.describe()}),
                    )
            return None
        hit = self._cached_or_merged("embeddings", key, f"target {comp.name}")
        if hit is None:
            with self.clock.stage("extract"):
                self.loader.ensure_loaded(t)
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
            with self.clock.stage("extract"):
                self.loader.ensure_loaded(b)
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
        labels, names = self._map_labels(head)
        ids = [r.image_id for r in self.records]
        return FeatureSource(
            comp.name, arrays["values"], ids, np.asarray(arrays["ok"]), labels, head, names,
            bool(meta.get("random_weights")), meta.get("describe", desc), component=b,
        )

    def _map_labels(self, head: LinearHead) -> tuple[np.ndarray | None, list[str]]:
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

    def skipped(self, sources) -> list[str]:
        """The ids of the dataset's images that any of ``sources`` could not read."""
        skipped: set[str] = set()
        for src in sources:
            if self.records is not None and src.ok is not None:
                skipped |= {self.records[i].image_id for i in np.flatnonzero(~src.ok)}
        return sorted(skipped)


def shared_store(cfg, before_write=None) -> ArrayStore:
    """The output folder's store of the audit ``cfg``, with the cache shared across audits
    behind it (:mod:`sing_audit.pipeline.shared_cache`) unless that is off. A shared cache
    that cannot be used is a :class:`ConfigError` when the config's ``run.cache_dir`` names
    it, else a warning: the run goes on with its folder's cache alone."""
    from .shared_cache import LayeredStore, open_shared_cache, setting_of

    root = cfg.output_dir / "cache"
    setting = setting_of(cfg)
    if not setting.enabled:
        log.info("shared cache: off (%s)", setting.why())
        return ArrayStore(root, before_write=before_write)
    try:
        shared = open_shared_cache(setting, cfg.output_dir)
    except ConfigError as exc:
        if setting.source == "config":
            raise
        log.warning("%s; the run goes on without the shared cache", exc)
        return ArrayStore(root, before_write=before_write)
    log.info("shared cache: %s (%s), bound %d bytes", shared.root, setting.why(), shared.max_size)
    return LayeredStore(root, shared, before_write=before_write)
