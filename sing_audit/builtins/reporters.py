"""Built-in reporters: ``json`` (results.json), ``csv`` (per-class table), ``html``.

The html and pdf reporters render every registered report section
(:class:`sing_audit.report.ReportSection`) in order; see :mod:`sing_audit.report`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from sing_audit.components import Reporter
from sing_audit.hookspecs import hookimpl
from sing_audit.store import atomic_write_text


class JsonReporter(Reporter):
    """``results.json``: the typed :class:`~sing_audit.results.AuditResult`."""

    formats = ("json",)

    def write(self, result, output_dir: Path, fmt: str) -> list[Path]:
        path = Path(output_dir) / "results.json"
        atomic_write_text(path, result.model_dump_json(indent=2))
        return [path]


CLASS_COLUMNS = (
    "model", "target", "index", "name", "n", "as_mean", "as_abs_mean", "as_abs_ci_low", "as_abs_ci_high",
    "as_contrast", "is_mean", "flagged", "outlier", "waived", "flag_reasons", "random_weights",
)


def _cell(value) -> str:
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class ClassTableReporter(Reporter):
    """``classes.csv``: one row per model, target and class. Its ``random_weights``
    column says ``RANDOM WEIGHTS`` on every row of a model audited with random weights."""

    formats = ("csv",)

    def write(self, result, output_dir: Path, fmt: str) -> list[Path]:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(CLASS_COLUMNS)
        for m in result.models:
            for c in m.classes:
                row = (
                    m.name, m.target, c.index, c.name, c.n, c.as_mean, c.as_abs_mean, c.as_abs_ci.low,
                    c.as_abs_ci.high, c.as_contrast, c.is_mean, c.flagged, c.outlier, c.waived, " | ".join(c.flag_reasons),
                    "RANDOM WEIGHTS" if m.random_weights else "no",
                )
                writer.writerow([_cell(v) for v in row])
        path = Path(output_dir) / "classes.csv"
        atomic_write_text(path, buf.getvalue())
        return [path]


class HtmlReporter(Reporter):
    """``report.html``: a self-contained page (every picture embedded, no script, autoescaped)."""

    formats = ("html",)

    def write(self, result, output_dir: Path, fmt: str) -> list[Path]:
        from sing_audit.report import render_report

        path = Path(output_dir) / "report.html"
        atomic_write_text(path, render_report(result, Path(output_dir), medium="screen", registry=self.registry))
        return [path]


@hookimpl
def register_reporters(register):
    register("json", JsonReporter)
    register("csv", ClassTableReporter)
    register("html", HtmlReporter)
