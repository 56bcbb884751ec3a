"""sing-audit-pdf: the report as a PDF — registered through its entry point, self-contained,
stamped, with cut names, and harmless to image decoding."""

from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sing_audit.cli import main
from sing_audit.errors import SingAuditError
from sing_audit.host import create_registry
from sing_audit.report import NAME_CHARS, ReportRenderError
from sing_audit.synthetic import write_scenario
from sing_audit.testing import sample_result, synthetic_audit
from sing_audit_pdf import PdfReporter
from sing_audit_pdf.render import render_pdf

PDFTOPPM = shutil.which("pdftoppm")
PDFTOTEXT = shutil.which("pdftotext")
needs_poppler = pytest.mark.skipif(
    PDFTOPPM is None or PDFTOTEXT is None, reason="pdftoppm/pdftotext are not installed (apt-get install poppler-utils)"
)
XSS = '<script>alert(1)</script><img src=x onerror=alert(2)>'
#: one unbreakable word of 5000 characters: weasyprint's worst case for table layout
WORD = "ж" * 5000


@pytest.fixture(scope="module")
def scenario_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scenario")
    write_scenario(folder)
    return folder


def pages_png(pdf: Path, folder: Path) -> list[Path]:
    prefix = folder / f"page-{uuid.uuid4().hex[:6]}"
    subprocess.run([PDFTOPPM, "-r", "40", "-png", str(pdf), str(prefix)], check=True, capture_output=True, timeout=120)
    return sorted(folder.glob(prefix.name + "*.png"))


def pdf_text(pdf: Path) -> list[str]:
    text = subprocess.run([PDFTOTEXT, "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    return [t for t in text.split("\f") if t.strip()]


def ink(png: Path) -> float:
    """Share of pixels that are not (nearly) white."""
    with Image.open(png) as img:
        gray = np.asarray(img.convert("L"))
    return float((gray < 235).mean())


def test_the_pdf_format_comes_from_this_distribution():
    reg = create_registry().reporters_by_format()["pdf"]
    assert reg.factory is PdfReporter and reg.package.startswith("sing-audit-pdf ")


@pytest.mark.slow
@needs_poppler
def test_demo_pdf_has_numbered_pages_with_content(tmp_path, scenario_dir):
    cfg = synthetic_audit(tmp_path, scenario_dir, name="synthetic-demo", report={"formats": ["json", "pdf"]},
                          probes=["null_removal", "nullspace_validation", "steering", "rank_sensitivity"])
    assert main(["run", str(cfg)]) == 1
    pdf = tmp_path / "out" / "report.pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
    assert json.loads((tmp_path / "out" / "results.json").read_text())["files"]["pdf"] == "report.pdf"
    pages = pages_png(pdf, tmp_path)
    assert len(pages) >= 2 and all(ink(p) > 0.01 for p in pages)
    texts = pdf_text(pdf)
    assert len(texts) == len(pages)
    for i, t in enumerate(texts, 1):
        assert "synthetic-demo" in t and f"page {i} of {len(pages)}" in t  # running header and page numbers
        assert "RANDOM WEIGHTS" not in t


@pytest.mark.slow
@needs_poppler
def test_random_weights_stamp_on_every_page(tmp_path):
    result = sample_result(random_weights=True, name0=XSS, audit_name="stamp-check")
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(render_pdf(result, tmp_path))
    pages = pages_png(pdf, tmp_path)
    assert len(pages) >= 2 and all(ink(p) > 0.005 for p in pages)
    texts = pdf_text(pdf)
    assert len(texts) == len(pages)
    assert all("RANDOM WEIGHTS" in t and "stamp-check" in t for t in texts)
    assert any(XSS in t.replace("\n", "") for t in texts) or "<script>" in "".join(texts)  # a hostile name is text


@pytest.mark.slow
@needs_poppler
def test_a_5000_character_class_name_is_cut_in_the_pdf(tmp_path):
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(render_pdf(sample_result(name0=WORD), tmp_path))
    text = "\n".join(pdf_text(pdf))
    assert "…" in text and "Names longer than" in text
    runs = [len(r) for r in re.findall("ж+", text)]
    assert runs and max(runs) <= NAME_CHARS - 1  # table cells wrap the cut name; never the whole name


def test_missing_weasyprint_is_a_clear_error(monkeypatch, tmp_path, scenario_dir, capsys):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "weasyprint" or name.startswith("weasyprint."):
            raise OSError("cannot load library 'libpango-1.0-0': libpango-1.0-0: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "weasyprint", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ReportRenderError, match="Pango") as err:
        PdfReporter()
    assert isinstance(err.value, SingAuditError) and "libpango" in str(err.value)
    # through the CLI: exit 2 before any work, naming the library, no traceback
    code = main(["run", str(synthetic_audit(tmp_path, scenario_dir, report={"formats": ["json", "pdf"]}))])
    captured = capsys.readouterr()
    assert code == 2
    assert "Pango" in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "out" / "results.json").exists()


# --------------------------------------------------------------------------- image decoding

_ORDER_SCRIPT = """
import io, sys
from pathlib import Path
from PIL import ImageFile
from sing_audit.components import ImageRecord, open_image
from sing_audit.errors import DataError

order, importer, path = sys.argv[1:4]

def load_library():
    if importer == "load_weasyprint":
        from sing_audit_pdf.render import load_weasyprint
        load_weasyprint()
    else:
        import weasyprint  # a library importing it behind our back
    print("flag after import:", ImageFile.LOAD_TRUNCATED_IMAGES)

record = ImageRecord(image_id="cut.jpg", path=Path(path), label=None)
if order == "weasyprint first":
    load_library()
try:
    open_image(record)
except DataError as exc:
    print("DataError:", exc)
else:
    print("AUDITED THE TRUNCATED IMAGE")
if order == "images first":
    load_library()
    try:
        open_image(record)
    except DataError as exc:
        print("DataError again:", exc)
    else:
        print("AUDITED THE TRUNCATED IMAGE")
"""


def _truncated_jpeg(path: Path) -> Path:
    import io

    pixels = np.random.default_rng(0).integers(0, 256, size=(48, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


@pytest.mark.parametrize("importer", ["import weasyprint", "load_weasyprint"])
@pytest.mark.parametrize("order", ["weasyprint first", "images first"])
def test_a_truncated_image_stays_bad_data_in_either_import_order(tmp_path, order, importer):
    """Importing weasyprint turns on Pillow's LOAD_TRUNCATED_IMAGES for the whole process;
    decoding must not depend on whether, or when, the pdf reporter was loaded."""
    bad = _truncated_jpeg(tmp_path / "cut.jpg")
    done = subprocess.run([sys.executable, "-c", _ORDER_SCRIPT, order, importer, str(bad)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "DataError:" in done.stdout and "cut.jpg" in done.stdout and "AUDITED" not in done.stdout, done.stdout
    if importer == "load_weasyprint":
        assert "flag after import: False" in done.stdout  # restored at once


@pytest.mark.parametrize("before", [False, True])
def test_load_weasyprint_restores_the_previous_flag(before):
    code = textwrap.dedent(
        """
        import sys
        from PIL import ImageFile
        ImageFile.LOAD_TRUNCATED_IMAGES = sys.argv[1] == "True"
        import weasyprint
        print("weasyprint's own choice:", ImageFile.LOAD_TRUNCATED_IMAGES)
        """
    )
    done = subprocess.run([sys.executable, "-c", code, str(before)], capture_output=True, text=True, timeout=300)
    assert "weasyprint's own choice: True" in done.stdout  # the problem is real
    code = textwrap.dedent(
        """
        import sys
        from PIL import ImageFile
        ImageFile.LOAD_TRUNCATED_IMAGES = sys.argv[1] == "True"
        from sing_audit_pdf.render import load_weasyprint
        load_weasyprint()
        print("after:", ImageFile.LOAD_TRUNCATED_IMAGES)
        """
    )
    done = subprocess.run([sys.executable, "-c", code, str(before)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"after: {before}" in done.stdout
