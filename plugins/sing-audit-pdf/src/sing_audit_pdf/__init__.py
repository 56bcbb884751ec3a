"""sing-audit-pdf: ``report.pdf``, the audit report as a PDF a reviewer can sign off.

A plugin distribution like any third party's: its entry point in the ``sing_audit``
group names this module, whose ``@hookimpl`` registers the ``pdf`` format.
"""

from __future__ import annotations

from pathlib import Path

from sing_audit import hookimpl
from sing_audit.components import Reporter
from sing_audit.store import atomic_write_bytes

__all__ = ["PdfReporter"]


class PdfReporter(Reporter):
    """``report.pdf``: the report's sections with print styling (weasyprint; needs Pango)."""

    formats = ("pdf",)

    def __init__(self) -> None:
        from .render import load_weasyprint

        # fail before the audit runs, with the library to install, not after it
        load_weasyprint()

    def write(self, result, output_dir: Path, fmt: str) -> list[Path]:
        from .render import render_pdf

        path = Path(output_dir) / "report.pdf"
        atomic_write_bytes(path, render_pdf(result, Path(output_dir), registry=self.registry))
        return [path]


@hookimpl
def register_reporters(register):
    register("pdf", PdfReporter)
