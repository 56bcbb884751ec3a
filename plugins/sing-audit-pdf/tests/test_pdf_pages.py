"""Every PDF page keeps its content inside the printable box: rendered to PNG, no ink lies
outside the page's content area except the running header and footer in their bands."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sing_audit.cli import main
from sing_audit.synthetic import write_scenario
from sing_audit.testing import image_folder_audit, synthetic_audit

PDFTOPPM = shutil.which("pdftoppm")
needs_poppler = pytest.mark.skipif(PDFTOPPM is None, reason="pdftoppm is not installed (apt-get install poppler-utils)")
REPO = Path(__file__).resolve().parents[3]

#: the report's print page (report.html.j2, ``@page``): A4, margins top, right, bottom, left
PAGE_MM = (210.0, 297.0)
MARGIN_MM = (19.0, 13.0, 16.0, 13.0)
#: where the running header and footer may ink: the top and bottom margins' inner bands,
#: across the content width (the header sits on the content box, the footer mid-margin)
HEADER_BAND_MM = (5.0, MARGIN_MM[0])
FOOTER_BAND_MM = (PAGE_MM[1] - MARGIN_MM[2], PAGE_MM[1] - 3.0)
#: anti-aliasing and rounding of the raster
SLACK_MM = 0.8
DPI = 60
#: twelve thresholds: wider than any page, so the rank-sensitivity table must be split
WIDE_GRID = [0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9]


def _render(pdf: Path, folder: Path) -> list[Path]:
    prefix = folder / "page"
    subprocess.run([PDFTOPPM, "-r", str(DPI), "-png", str(pdf), str(prefix)], check=True, capture_output=True,
                   timeout=300)
    return sorted(folder.glob("page*.png"))


def outside_ink(png: Path) -> list[str]:
    """Where ``png`` (one page) has ink outside the printable box, as readable places."""
    with Image.open(png) as img:
        gray = np.asarray(img.convert("L"))
    h, w = gray.shape
    px_w, px_h = w / PAGE_MM[0], h / PAGE_MM[1]  # pixels per mm
    ink = gray < 225
    allowed = np.zeros_like(ink)
    top, right, bottom, left = MARGIN_MM
    x0, x1 = int((left - SLACK_MM) * px_w), int(np.ceil((PAGE_MM[0] - right + SLACK_MM) * px_w))
    allowed[int((top - SLACK_MM) * px_h): int(np.ceil((PAGE_MM[1] - bottom + SLACK_MM) * px_h)), x0:x1] = True
    for lo, hi in (HEADER_BAND_MM, FOOTER_BAND_MM):
        allowed[int(lo * px_h): int(np.ceil(hi * px_h)), x0:x1] = True
    stray = ink & ~allowed
    if not stray.any():
        return []
    ys, xs = np.nonzero(stray)
    places = []
    if (xs >= x1).any():
        places.append(f"{(xs >= x1).sum()} pixels right of the right margin (up to {xs.max() / px_w:.1f} mm of {PAGE_MM[0]:g})")
    if (xs < x0).any():
        places.append(f"{(xs < x0).sum()} pixels left of the left margin")
    inside_x = (xs >= x0) & (xs < x1)
    if inside_x.any():
        places.append(f"{inside_x.sum()} pixels in the top/bottom margin outside the header and footer bands "
                      f"(y {ys[inside_x].min() / px_h:.1f}–{ys[inside_x].max() / px_h:.1f} mm)")
    return places


def assert_pages_inside(pdf: Path, folder: Path) -> int:
    pages = _render(pdf, folder)
    assert pages
    bad = {p.name: where for p in pages if (where := outside_ink(p))}
    assert not bad, f"content crosses the page margins of {pdf}: {bad}"
    return len(pages)


def test_outside_ink_finds_a_mark_past_the_right_margin(tmp_path):
    """The check itself can fail: a blank page passes, a mark right of the margin does not."""
    w, h = round(PAGE_MM[0] / 25.4 * DPI), round(PAGE_MM[1] / 25.4 * DPI)
    page = np.full((h, w), 255, dtype=np.uint8)
    Image.fromarray(page).save(tmp_path / "blank.png")
    assert outside_ink(tmp_path / "blank.png") == []
    page[h // 2, int(w * 0.97)] = 0
    Image.fromarray(page).save(tmp_path / "wide.png")
    assert "right of the right margin" in outside_ink(tmp_path / "wide.png")[0]


@pytest.mark.slow
@needs_poppler
def test_demo_pdf_pages_stay_inside_the_margins(tmp_path):
    out = tmp_path / "demo"
    assert main(["run", str(REPO / "examples" / "synthetic" / "audit.yaml"), "-o", f"output={out}"]) == 1
    assert assert_pages_inside(out / "report.pdf", tmp_path) >= 3


@pytest.mark.slow
@needs_poppler
def test_a_wide_sensitivity_grid_stays_inside_the_margins(tmp_path):
    """The rank-sensitivity table of :data:`WIDE_GRID` is split rather than run off the page."""
    scenario = tmp_path / "scenario"
    write_scenario(scenario)
    cfg = synthetic_audit(tmp_path, scenario, name="wide-grid", report={"formats": ["json", "pdf"]},
                          probes=["null_removal", {"plugin": "rank_sensitivity", "rule": "fraction", "values": WIDE_GRID}])
    assert main(["run", str(cfg)]) in (0, 1)
    assert_pages_inside(tmp_path / "out" / "report.pdf", tmp_path)


@pytest.mark.slow
@needs_poppler
def test_input_space_pages_stay_inside_the_margins(tmp_path):
    """A random-init timm ViT with the input-space probes (the Jacobian spectrum's log axis)
    and a wide rank-sensitivity grid, over a tiny image folder."""
    pytest.importorskip("timm")
    cfg = image_folder_audit(
        tmp_path,
        [{"name": "vit", "plugin": "timm", "model": "vit_tiny_patch16_224", "weights": "random", "img_size": 32}],
        per_class=2,
        probes=["null_removal",
                {"plugin": "patch_embed_null", "max_images": 2, "examples": 1},
                {"plugin": "jacobian", "max_images": 1, "eps": [1e-3, 1e-1], "n_random": 1},
                {"plugin": "rank_sensitivity", "rule": "fraction", "values": WIDE_GRID}],
        report={"formats": ["json", "html", "pdf"]},
    )
    assert main(["run", str(cfg)]) == 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Input-space invariance" in html and "σ of ∂f/∂x" not in html  # the chart is a picture
    assert_pages_inside(tmp_path / "out" / "report.pdf", tmp_path)


@pytest.mark.slow
@needs_poppler
def test_pipeline_check_pdf_pages_stay_inside_the_margins(tmp_path):
    """Random-init timm and open_clip models (one to several minutes on a CPU); the example
    writes no PDF itself, so it is rendered from the run's results.json."""
    pytest.importorskip("timm")
    pytest.importorskip("open_clip")
    out = tmp_path / "pipeline-check"
    assert main(["run", str(REPO / "examples" / "pipeline_check" / "audit.yaml"), "-o", f"output={out}"]) == 0
    assert main(["report", "-f", "pdf", str(out)]) == 0
    assert assert_pages_inside(out / "report.pdf", tmp_path) >= 3
