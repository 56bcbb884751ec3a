"""The run's files in the output folder: per-image CSV tables, results.json first, then
every configured report format."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from ..errors import ConfigError, OutputWriteError, WriterFailure
from ..host import Component, Registry
from ..progress import progress
from ..results import AuditResult
from ..store import atomic_write_text
from .plan import Plan, create_reporter
from .run_folder import RunFolder

__all__ = ["csv_text", "write_outputs"]

log = logging.getLogger("sing_audit")


def csv_text(columns: dict[str, np.ndarray]) -> str:
    """A table of equally long columns as CSV (non-finite floats empty, text made safe)."""
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


def _json_reporter(registry: Registry) -> Component:
    """results.json is the contract: written even when report.formats leaves json out."""
    if "json" not in registry.reporters_by_format():
        raise ConfigError("no installed reporter writes the json format (results.json)")
    return create_reporter(registry, "json")


def write_outputs(result: AuditResult, plan: Plan, folder: RunFolder) -> AuditResult:
    """Write results.json first, then every other configured output; return the result
    with the files the reporters wrote added to its ``files`` (a format's first file
    under the format's name, any further one under ``"<format>:<path>"``).

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
    json_reporter = reporters.pop("json", None) or _json_reporter(plan.registry)
    json_reporter.instance.write(result, out, "json")
    folder.record("results.json")
    files = dict(result.files)
    failures: list[WriterFailure] = []
    # writers first; publishers (experiment trackers) after them, so they send the final
    # results.json and every file the writers made
    writers = {f: c for f, c in reporters.items() if not getattr(c.instance, "publishes", False)}
    publishers = {f: c for f, c in reporters.items() if f not in writers}

    def _write(stage: dict[str, Component], result: AuditResult) -> None:
        for fmt, comp in progress(stage.items(), desc="report", unit="format"):
            try:
                written = comp.instance.write(result, out, fmt)
            except Exception as exc:  # noqa: BLE001 - collected and re-raised below with the result
                log.error("output %s (reporter %r from %s) failed", fmt, comp.plugin, comp.package, exc_info=True)
                failures.append(WriterFailure(fmt, comp.plugin, comp.package, exc))
                continue
            for i, path in enumerate(written):
                rel = Path(path).resolve().relative_to(out.resolve()).as_posix()
                folder.record(rel)
                files[fmt if i == 0 else f"{fmt}:{rel}"] = rel  # a format's first file under its name

    for stage in (writers, publishers):
        if not stage:
            continue
        _write(stage, result)
        if files != result.files:
            result = result.model_copy(update={"files": dict(files)})  # a copy: the next stage adds to files
            json_reporter.instance.write(result, out, "json")
    if failures:
        raise OutputWriteError(result, failures, out, [f for f in folder.written])
    return result
