"""Charts that read right: the IS–AS scatter's ellipses (enough classes, never below IS 0)
and log axes labelled in plain text."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.patches import PathPatch

from sing_audit import figures, plots
from sing_audit.builtins.input_sections import spectrum_chart, spectrum_figure


def _ellipses(fig) -> list[PathPatch]:
    return [p for p in fig.axes[0].patches if str(p.get_gid() or "").startswith("ellipse")]


def _series(n: int, label: str, rng, is_centre: float = 1.0, is_spread: float = 3.0) -> plots.ScatterSeries:
    # IS ≥ 0 with a spread that puts a 2σ contour well below 0
    x = np.abs(rng.normal(is_centre, is_spread, n))
    return plots.ScatterSeries(label, list(x), list(rng.normal(0.0, 2.0, n)))


def test_no_ellipse_below_the_class_minimum_but_a_centroid():
    rng = np.random.default_rng(0)
    few = _series(plots.MIN_ELLIPSE_CLASSES - 1, "few", rng)
    fig = plots.scatter_is_as_figure([few])
    assert _ellipses(fig) == []
    assert any(line.get_gid() == "centroid" for line in fig.axes[0].lines)
    # its interval stops at IS 0 too
    bars = [seg for c in fig.axes[0].containers for coll in c.lines[2] for seg in coll.get_segments()]
    assert bars and min(seg[:, 0].min() for seg in bars) >= 0.0
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "mean ± 95% CI" in legend and not any("ellipse" in t for t in legend)


def test_ellipses_from_the_minimum_are_cut_at_is_zero_and_named_with_it():
    rng = np.random.default_rng(1)
    fig = plots.scatter_is_as_figure([_series(plots.MIN_ELLIPSE_CLASSES, "enough", rng)])
    ellipses = _ellipses(fig)
    assert {p.get_gid() for p in ellipses} == {"ellipse-1", "ellipse-2"}
    for patch in ellipses:
        verts = patch.get_path().vertices
        assert len(verts) > 10 and verts[:, 0].min() >= 0.0
    # the 2σ contour of this cloud does reach IS < 0: it was cut, at exactly 0
    two = next(p for p in ellipses if p.get_gid() == "ellipse-2").get_path().vertices
    assert np.isclose(two[:, 0].min(), 0.0)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"1σ ellipse (≥ {plots.MIN_ELLIPSE_CLASSES} classes)" in legend


def test_ellipse_path_cut_ends_lie_on_the_bound():
    cov = np.array([[4.0, 1.0], [1.0, 2.0]])
    whole = plots.ellipse_path((10.0, 0.0), cov, 2.0)
    assert whole.vertices[:, 0].min() > 0
    cut = plots.ellipse_path((0.5, 0.0), cov, 2.0)
    assert cut.vertices[:, 0].min() == pytest.approx(0.0, abs=1e-12)
    assert plots.ellipse_path((-50.0, 0.0), cov, 1.0) is None  # wholly below 0: nothing drawn
    assert plots.ellipse_path((1.0, 0.0), np.zeros((2, 2)), 1.0) is None


def test_scatter_still_renders_as_a_png_uri():
    rng = np.random.default_rng(2)
    uri = plots.scatter_is_as([_series(30, "a", rng), _series(5, "b", rng)])
    assert uri.startswith("data:image/png;base64,")


@pytest.mark.parametrize("values", [list(5 * 0.8 ** np.arange(64)), [3.0, 2.5, 2.2, 2.0], [1e-9, 1e3]])
def test_log_tick_labels_are_plain_text(values):
    fig = spectrum_figure([("model", values, "#1a73e8")])
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True) if t.get_text()]
    assert labels, "the log axis has labelled ticks"
    assert not any("$" in t or "}}" in t or "mathdefault" in t for t in labels), labels
    # the y-label lies wholly inside the figure
    renderer = fig.canvas.get_renderer()
    box = ax.yaxis.label.get_window_extent(renderer)
    assert box.x0 >= 0 and box.y0 >= 0 and box.y1 <= fig.bbox.height
    assert all(t.get_window_extent(renderer).x0 >= 0 for t in ax.get_yticklabels() if t.get_text())


def test_log_tick_label():
    assert figures.log_tick_label(1.0) == "10⁰"
    assert figures.log_tick_label(1e-3) == "10⁻³"
    assert figures.log_tick_label(100.0) == "10²"
    assert figures.log_tick_label(0.25) == "0.25"
    assert figures.log_tick_label(0.0) == ""


def test_spectrum_chart_keeps_its_contract():
    assert spectrum_chart([("m", [0.0, -1.0], "#000")]) is None
    assert spectrum_chart([("m", [3.0, 1.0, 0.1], "#000")]).startswith("data:image/png;base64,")
