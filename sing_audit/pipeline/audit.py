"""The audit end to end: plan → sources → each model's analysis → result → files.

The only place that holds the run together; every stage it calls gets what it needs
and returns what it made, none calls back into it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..components import ImageBackbone, ImageTarget
from ..config import load_config
from ..host import Registry, create_registry
from ..results import AuditResult, ModelResult
from ..store import atomic_write_text
from .build import build_audit_result, build_model_comparisons, model_key
from .model import Services, analyse_model
from .outputs import csv_text, write_outputs
from .plan import audit_identity, build_plan
from .run_folder import RunFolder
from .shard import Shard
from .sources import Sources
from .stages import file_log

__all__ = ["ShardReport", "run_audit", "run_shard"]

log = logging.getLogger("sing_audit")


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
            file_log(out, f"shard-{shard.index}-of-{shard.count}.log"):
        for note in folder.notes:
            log.warning("%s", note)
        # the folder is claimed when the run stores its first measurement (see RunFolder)
        sources = Sources.create(plan, folder.claim, shard=shard)
        sources.load_dataset()
        names = []
        for comp in plan.targets:
            if isinstance(comp.instance, ImageTarget):
                sources.load_target(comp)
                names.append(f"target {comp.name}")
        for comp in plan.backbones:
            if isinstance(comp.instance, ImageBackbone):
                sources.load_backbone(comp)
                names.append(f"backbone {comp.name}")
        n = len(sources.records) if sources.records is not None else 0
        rows = shard.rows(n, cfg.run.batch_size)
        sources.log_shared()
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
    with RunFolder(out, audit_identity(cfg), force=force, wait=wait, notify=notify) as folder, file_log(out) as log_path:
        log.info("sing-audit %s: audit %s into %s", __version__, cfg.name or source, out)
        for note in folder.notes:
            log.warning("%s", note)
        sources = Sources.create(plan, folder.claim, merge_only=merge_only)
        sources.load_dataset()
        services = Services.of(sources)
        esources = [sources.load_target(t) for t in plan.targets]
        texts = [services.text_encoder(e) for e in esources]
        models: list[ModelResult] = []
        abs_as: dict[tuple[str, str], np.ndarray] = {}
        per_image_files: dict[str, str] = {}
        fsources = []
        for comp in plan.backbones:
            fsrc = sources.load_backbone(comp)
            fsources.append(fsrc)
            for esrc, text in zip(esources, texts):
                folder.claim()  # measuring from here on (the analysis writes what it computes)
                result, per_image = analyse_model(services, fsrc, esrc, text)
                rel = result.files["images_csv"]
                atomic_write_text(out / rel, csv_text(per_image))
                folder.record(rel)
                abs_as[(result.name, result.target)] = np.abs(np.asarray(per_image["as"], dtype=np.float64))
                per_image_files[model_key(result.name, result.target)] = rel
                models.append(result)
        files = {
            "config": "config.resolved.yaml",
            "log": str(log_path.relative_to(out)),
            **{f"images:{k}": v for k, v in per_image_files.items()},
            "json": "results.json",
        }
        sources.log_shared()
        comparisons = build_model_comparisons(models, abs_as, cfg.run.seed, cfg.run.bootstrap)
        result = build_audit_result(
            plan, models, comparisons, dataset=sources.dataset_info, stage_seconds=sources.clock.seconds,
            skipped=sources.skipped(fsources + esources), files=files, started=started,
            finished=dt.datetime.now(dt.timezone.utc),
        )
        result = write_outputs(result, plan, folder)
        log.info("verdict: %s", result.verdict)
    return result
