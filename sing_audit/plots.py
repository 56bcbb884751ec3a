"""Charts of the report, as compact PNG ``data:`` URIs (matplotlib, no pyplot state).

Every function takes plain numbers and labels, never the result, so third-party report
sections can reuse them. Labels are drawn as literal text (mathtext off): a class named
``$x$`` or ``<img …>`` is drawn as typed, and the pictures are pixels, so nothing in a
label can reach the page's markup. Names are cut to a bounded length with "…"
(:data:`ROW_LABEL_CHARS`, :data:`LABEL_CHARS`, :data:`HEADING_CHARS`), as everywhere in the report.

Margins are measured from the labels rather than found by matplotlib's layout engines,
which lay every text out several times: charts draw in about half the time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .figures import _CACHE, DPI, LABEL_PT, TICK_PT, cached as _cached, chart_style as _style, figure_to_data_uri
from .palette import FLAG_COLOR, MODEL_COLORS, NEUTRAL
from .report import short_name

__all__ = [
    "MODEL_COLORS",
    "MIN_ELLIPSE_CLASSES",
    "ScatterSeries",
    "concept_bars",
    "figure_to_data_uri",
    "ratio_bars",
    "ellipse_path",
    "scatter_is_as",
    "scatter_is_as_figure",
    "sensitivity_lines",
    "short",
    "violins",
]



#: Characters of a name the charts draw (class names, model labels, concept words), cut
#: with "…" by the report's :func:`~sing_audit.report.short_name` like every name of the
#: report. Each is at least 30, so the readable ImageNet names ("American Staffordshire
#: terrier") are drawn whole; the full names are in the report's tables and results.json.
#: Row labels left of the axes naming a class or a model (violins, ratio bars); the axes
#: give way to them.
ROW_LABEL_CHARS = 40
#: legend entries (model labels), names written beside a point of the scatter, and concept
#: words (rows of the concept chart, whose long axis label needs the width)
LABEL_CHARS = 30
#: the class heading over each group of the concept chart (drawn across the figure)
HEADING_CHARS = 48


def short(text: str, width: int = ROW_LABEL_CHARS) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis
    (:func:`sing_audit.report.short_name`, kept under this name for chart code)."""
    return short_name(text, width)


def _text_width(labels: Sequence[str], size: float = TICK_PT, bold: bool = False) -> float:
    """Width in inches of the widest label (0 for none)."""
    if not labels:
        return 0.0
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer = RendererAgg(8, 8, 72)  # 72 dpi: pixels are points
    prop = FontProperties(size=size, weight="bold" if bold else "normal")
    widest = max(renderer.get_text_width_height_descent(str(s), prop, ismath=False)[0] for s in labels)
    return widest / 72.0


def _axes(width: float, height: float, left: float = 0.55, right: float = 0.2, top: float = 0.15, bottom: float = 0.5):
    """A figure with one axes placed by margins given in inches."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    left = min(left, 0.55 * width)
    right = min(right, 0.35 * width)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height)
    return fig, fig.add_subplot()


def _xlabel(fig, ax, text: str) -> None:
    """The x-axis label, centred under the figure rather than the axes when it is wider than
    the axes (long row labels push the axes right, and the label would run off the figure)."""
    ax.set_xlabel(text)
    pos = ax.get_position()
    if _text_width([text], LABEL_PT) > pos.width * fig.get_figwidth():
        ax.xaxis.label.set_x((0.5 - pos.x0) / pos.width)


def _row_labels(ax, ys: Sequence[float], labels: Sequence[str], colors: Sequence[str | None] = (),
                bold: Sequence[bool] = ()) -> None:
    """Labels left of the axes at data heights ``ys`` (cheaper than tick labels)."""
    ax.set_yticks([])
    transform = ax.get_yaxis_transform()
    for i, (y, text) in enumerate(zip(ys, labels)):
        ax.text(-0.012, y, text, transform=transform, ha="right", va="center", fontsize=TICK_PT,
                color=(colors[i] if i < len(colors) and colors[i] else "#202124"),
                fontweight="bold" if i < len(bold) and bold[i] else "normal")


# --------------------------------------------------------------------------- IS vs AS


@dataclass
class ScatterSeries:
    """The class means of one model."""

    label: str
    is_means: Sequence[float]
    as_means: Sequence[float]
    flagged: Sequence[bool] = ()
    names: Sequence[str] = ()
    color: str | None = None
    annotate: list[int] = field(default_factory=list)


#: Classes a model needs before the scatter draws its covariance ellipses. Below it the
#: ellipse's axes rest on too few points to mean anything (see :func:`scatter_is_as`), and
#: the model gets only its centroid with a 95% interval.
MIN_ELLIPSE_CLASSES = 20
#: IS is an angle between two vectors: nothing is drawn outside [0°, 180°]
IS_RANGE = (0.0, 180.0)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of True in ``mask``."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def ellipse_path(center, cov: np.ndarray, k: float, x_range: tuple[float, float] = IS_RANGE, n: int = 240):
    """The ``k``σ contour of a 2-D covariance around ``center`` as a matplotlib ``Path`` of
    open pieces, cut where it leaves ``x_range`` (the cut ends lie exactly on the bound),
    or None for a degenerate covariance or a contour wholly outside."""
    from matplotlib.path import Path as MplPath

    cov = np.asarray(cov, dtype=float)
    if cov.shape != (2, 2) or not np.all(np.isfinite(cov)):
        return None
    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0.0, None)
    if vals.max() <= 0:
        return None
    t = np.linspace(0.0, 2 * np.pi, n + 1)
    unit = np.stack([np.cos(t), np.sin(t)], axis=1) * (k * np.sqrt(vals))
    pts = np.asarray(center, dtype=float) + unit @ vecs.T
    lo, hi = x_range
    inside = (pts[:, 0] >= lo) & (pts[:, 0] <= hi)
    verts, codes = [], []
    for a, b in _runs(inside):
        piece = [pts[i] for i in range(a, b)]
        for out, last, at_start in ((a - 1, a, True), (b, b - 1, False)):  # where the contour crosses the bound
            if 0 <= out < len(pts) and not inside[out]:
                bound = lo if pts[out, 0] < lo else hi
                f = (bound - pts[last, 0]) / (pts[out, 0] - pts[last, 0])
                cut = np.array([bound, pts[last, 1] + f * (pts[out, 1] - pts[last, 1])])
                piece = [cut, *piece] if at_start else [*piece, cut]
        if len(piece) >= 2:
            verts += piece
            codes += [MplPath.MOVETO] + [MplPath.LINETO] * (len(piece) - 1)
    return MplPath(np.array(verts), codes) if verts else None


def _ellipse(ax, pts: np.ndarray, k: float, color: str, style: str) -> None:
    from matplotlib.patches import PathPatch

    path = ellipse_path(pts.mean(axis=0), np.cov(pts, rowvar=False), k)
    if path is not None:
        ax.add_patch(PathPatch(path, fill=False, edgecolor=color, linestyle=style, linewidth=1.2, gid=f"ellipse-{k:g}"))


def _centroid(ax, pts: np.ndarray, color: str) -> None:
    """The mean of the points with its 95% interval on each axis (normal, 1.96 standard errors)."""
    centre = pts.mean(axis=0)
    half = 1.96 * pts.std(axis=0, ddof=1) / math.sqrt(len(pts)) if len(pts) > 1 else np.zeros(2)
    low_x = max(centre[0] - half[0], IS_RANGE[0])
    ax.errorbar([centre[0]], [centre[1]], xerr=[[centre[0] - low_x], [half[0]]], yerr=[[half[1]], [half[1]]],
                fmt="P", markersize=8, color=color, markeredgecolor="#202124", markeredgewidth=0.8, elinewidth=1.4,
                capsize=3, zorder=4, gid="centroid")


def scatter_is_as_figure(series: Sequence[ScatterSeries], width: float = 7.2, height: float = 4.2):
    """The figure of :func:`scatter_is_as` (for tests and third-party sections)."""
    legend = [f"{short(s.label, LABEL_CHARS)} ({len(s.is_means)} classes)" for s in series] + [
        "flagged class", "mean ± 95% CI", f"1σ ellipse (≥ {MIN_ELLIPSE_CLASSES} classes)"]
    with _style():
        fig, ax = _axes(width, height, left=0.6, right=_text_width(legend) + 0.55, top=0.15, bottom=0.5)
        _draw_scatter(ax, series)
    return fig


def _draw_scatter(ax, series: Sequence[ScatterSeries]) -> None:
    ax.axhline(0, color="#9aa0a6", linewidth=0.8, zorder=1)
    every_x = np.concatenate([np.asarray(s.is_means, dtype=float) for s in series] or [np.zeros(0)])
    every_x = every_x[np.isfinite(every_x)]
    x_mid = float(every_x.min() + every_x.max()) / 2 if every_x.size else 0.0
    any_flag = any_ellipse = any_centroid = False
    for i, s in enumerate(series):
        color = s.color or MODEL_COLORS[i % len(MODEL_COLORS)]
        x = np.asarray(s.is_means, dtype=float)
        y = np.asarray(s.as_means, dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        flagged = np.asarray(s.flagged, dtype=bool) if len(s.flagged) == len(x) else np.zeros(len(x), bool)
        size = 9 if ok.sum() > 300 else 18
        ax.scatter(x[ok & ~flagged], y[ok & ~flagged], s=size, color=color, alpha=0.55, linewidths=0,
                   label=f"{short(s.label, LABEL_CHARS)} ({int(ok.sum())} classes)", zorder=2)
        if (ok & flagged).any():
            any_flag = True
            ax.scatter(x[ok & flagged], y[ok & flagged], s=size * 2.6, facecolor=color, edgecolor=FLAG_COLOR,
                       linewidths=1.4, zorder=3)
        pts = np.column_stack([x[ok], y[ok]])
        if len(pts):
            any_centroid = True
            _centroid(ax, pts, color)
        if len(pts) >= MIN_ELLIPSE_CLASSES:
            any_ellipse = True
            _ellipse(ax, pts, 1.0, color, "-")
            _ellipse(ax, pts, 2.0, color, "--")
        for n_ann, j in enumerate(s.annotate):
            if 0 <= j < len(x) and ok[j] and j < len(s.names):
                # toward the middle, so a long name stays inside the axes; alternately above and
                # below, so neighbouring labels do not collide
                dx, ha = (5, "left") if x[j] <= x_mid else (-5, "right")
                dy, va = (4, "bottom") if n_ann % 2 == 0 else (-4, "top")
                ax.annotate(short(s.names[j], LABEL_CHARS), (x[j], y[j]), xytext=(dx, dy), textcoords="offset points",
                            fontsize=7.5, color="#202124", ha=ha, va=va)
    if any_flag:
        ax.scatter([], [], s=30, facecolor="white", edgecolor=FLAG_COLOR, linewidths=1.4, label="flagged class")
    if any_centroid:
        ax.errorbar([], [], xerr=[], yerr=[], fmt="P", markersize=7, color=NEUTRAL, markeredgecolor="#202124",
                    markeredgewidth=0.8, capsize=3, label="mean ± 95% CI")
    if any_ellipse:
        ax.plot([], [], color=NEUTRAL, linestyle="-", label=f"1σ ellipse (≥ {MIN_ELLIPSE_CLASSES} classes)")
        ax.plot([], [], color=NEUTRAL, linestyle="--", label=f"2σ ellipse (≥ {MIN_ELLIPSE_CLASSES} classes)")
    if every_x.size:  # IS is never negative: the axis starts at 0 or just left of it for the markers
        ax.set_xlim(left=max(ax.get_xlim()[0], -0.03 * max(float(every_x.max()), 1e-9)))
    ax.set_xlabel("mean IS of the class (°)")
    ax.set_ylabel("mean AS of the class (°)")
    # outside the axes: "best" would test every point (slow) and still hide some
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0.2)


@_cached
def scatter_is_as(series: Sequence[ScatterSeries], width: float = 7.2, height: float = 4.2) -> str:
    """Mean IS (x) against mean AS (y) per class, one colour per model; each model's centroid
    with its 95% interval, and, for a model with at least :data:`MIN_ELLIPSE_CLASSES` classes,
    1σ (solid) and 2σ (dashed) ellipses of the covariance of its points, cut at IS = 0.

    Why not an ellipse for every model: an ellipse draws the points as one Gaussian cloud.
    From a handful of classes its axes are mostly noise, and a model whose classes fall in
    two groups (a few leaking classes far from the rest, the very thing the audit looks
    for) gets a long thin ellipse along the line joining the groups, which reads like a
    trend that no class follows; its 2σ contour also runs into negative IS, which no class
    can have. The centroid with its interval says what such a model's points support:
    where the model sits, and how sure that is. Ellipses are cut where IS < 0 rather than
    drawn into impossible values.
    """
    with _style():
        return figure_to_data_uri(scatter_is_as_figure(series, width, height))


# --------------------------------------------------------------------------- ratio bars


@_cached
def ratio_bars(labels: Sequence[str], ratios: Sequence[float | None], lows: Sequence[float | None],
               highs: Sequence[float | None], colors: Sequence[str] | None = None, width: float = 7.2) -> str:
    """Horizontal bars of the IS/AS ratio per model with its 95% bootstrap interval;
    an undefined ratio (no null space) is written out instead of drawn as 0."""
    n = len(labels)
    names = [short(lab, ROW_LABEL_CHARS) for lab in labels]
    with _style():
        fig, ax = _axes(width, 0.75 + 0.3 * max(n, 1), left=_text_width(names) + 0.2, right=0.3, top=0.1, bottom=0.5)
        ax.grid(axis="y", visible=False)
        finite = [r for r in ratios if r is not None] + [h for h in highs if h is not None]
        top = max(finite) if finite else 1.0
        top = top if top > 0 else 1.0
        ys = [n - 1 - i for i in range(n)]
        for i, (r, lo, hi) in enumerate(zip(ratios, lows, highs)):
            y = ys[i]
            color = (colors[i] if colors else None) or MODEL_COLORS[i % len(MODEL_COLORS)]
            if r is None:
                ax.text(0.01 * top, y, "undefined: no null space", va="center", fontsize=8, color=NEUTRAL, style="italic")
                continue
            ax.barh(y, r, color=color, alpha=0.85, height=0.55)
            if lo is not None and hi is not None:
                ax.errorbar(r, y, xerr=[[max(r - lo, 0.0)], [max(hi - r, 0.0)]], color="#202124", capsize=3, linewidth=1)
            ax.text((hi if hi is not None else r) + 0.015 * top, y, f"{r:.2f}", va="center", fontsize=8)
        _row_labels(ax, ys, names)
        ax.set_xlim(0, top * 1.15)
        ax.set_ylim(-0.6, n - 0.4)
        _xlabel(fig, ax, "IS/AS ratio: mean IS / mean |AS| (higher: null space moves meaning less per degree)")
        return figure_to_data_uri(fig)


# --------------------------------------------------------------------------- violins


@_cached
def violins(labels: Sequence[str], values: Sequence[np.ndarray], highlight: Sequence[bool] = (),
            threshold: float | None = None, split: int | None = None, color: str = MODEL_COLORS[0],
            width: float = 7.2) -> str:
    """Horizontal violins of per-image AS, one per class, top to bottom in the given order.

    ``highlight`` marks flagged classes (red); ``threshold`` draws ±threshold lines;
    ``split`` draws a separator after that many rows (top classes | bottom classes).
    Classes with fewer than two distinct values are drawn as points.
    """
    n = len(labels)
    names = [short(lab, ROW_LABEL_CHARS) for lab in labels]
    with _style():
        fig, ax = _axes(width, 0.7 + 0.34 * max(n, 1), left=_text_width(names, bold=any(highlight)) + 0.2,
                        right=0.25, top=0.1, bottom=0.5)
        ax.grid(axis="y", visible=False)
        pos = [n - 1 - i for i in range(n)]
        clean = [np.asarray(v, dtype=float)[np.isfinite(v)] for v in values]
        kde_idx = [i for i, v in enumerate(clean) if v.size >= 2 and np.ptp(v) > 1e-9]
        if kde_idx:
            parts = ax.violinplot([clean[i] for i in kde_idx], positions=[pos[i] for i in kde_idx],
                                  orientation="horizontal", widths=0.8, showmedians=True, showextrema=False)
            for body, i in zip(parts["bodies"], kde_idx):
                hl = i < len(highlight) and highlight[i]
                body.set_facecolor(FLAG_COLOR if hl else color)
                body.set_edgecolor("none")
                body.set_alpha(0.55 if hl else 0.45)
            parts["cmedians"].set_color("#202124")
            parts["cmedians"].set_linewidth(1.0)
        for i, v in enumerate(clean):
            if i not in kde_idx and v.size:
                ax.scatter(v, np.full(v.size, pos[i]), s=10, color=color, alpha=0.7)
        if threshold:
            for t in (threshold, -threshold):
                ax.axvline(t, color=FLAG_COLOR, linestyle=":", linewidth=1)
        ax.axvline(0, color="#9aa0a6", linewidth=0.8)
        if split is not None and 0 < split < n:
            ax.axhline(n - split - 0.5, color="#9aa0a6", linewidth=0.8, linestyle="--")
        hl = [i < len(highlight) and bool(highlight[i]) for i in range(n)]
        _row_labels(ax, pos, names, colors=[FLAG_COLOR if h else None for h in hl], bold=hl)
        ax.set_ylim(-0.7, n - 0.3)
        _xlabel(fig, ax, "per-image AS (°)" + (f"; dotted: ±{threshold:g}° policy threshold on class mean |AS|" if threshold else ""))
        return figure_to_data_uri(fig)


# --------------------------------------------------------------------------- concepts


@_cached
def concept_bars(panels: Sequence[tuple[str, Sequence[tuple[str, float, float | None]]]], width: float = 7.2) -> str:
    """Per class (a group headed by its name), the concepts' AS as horizontal bars, each
    labelled with the angle between T(f) and the concept. One axes for all groups."""
    labels: list[str] = []
    values: list[float] = []
    angles: list[float | None] = []
    heads: list[tuple[float, str]] = []
    ys: list[float] = []
    y = 0.0
    for title, items in panels:
        heads.append((y, short(title, HEADING_CHARS)))
        y -= 1.0
        for concept, as_value, angle in items:
            ys.append(y)
            labels.append(short(concept, LABEL_CHARS))
            values.append(float(as_value) if as_value is not None else 0.0)
            angles.append(angle)
            y -= 1.0
        y -= 0.4
    with _style():
        left = _text_width(labels) + 0.2
        fig, ax = _axes(width, 0.6 + 0.19 * (len(ys) + len(heads)), left=left, right=0.25, top=0.05, bottom=0.5)
        ax.grid(axis="y", visible=False)
        ax.barh(ys, values, color=[FLAG_COLOR if v > 0 else MODEL_COLORS[0] for v in values], alpha=0.8, height=0.7)
        span = max((abs(v) for v in values), default=1.0) or 1.0
        for yy, v, ang in zip(ys, values, angles):
            if ang is not None:
                ax.text(v + (0.02 * span if v >= 0 else -0.02 * span), yy, f"{float(ang):.1f}°", va="center",
                        ha="left" if v >= 0 else "right", fontsize=7, color=NEUTRAL)
        from matplotlib.transforms import blended_transform_factory

        transform = blended_transform_factory(fig.transFigure, ax.transData)  # from the figure's left edge
        for yy, title in heads:
            ax.text(0.012, yy, title, transform=transform, va="center", ha="left", fontsize=LABEL_PT,
                    fontweight="bold", color="#202124", clip_on=False)
        _row_labels(ax, ys, labels)
        ax.axvline(0, color="#9aa0a6", linewidth=0.8)
        ax.set_xlim(-1.3 * span if min(values, default=0.0) < 0 else 0.0, 1.3 * span)
        ax.set_ylim(y + 0.6, 0.6)
        _xlabel(fig, ax, "AS toward the concept (°); at each bar: angle between T(f) and the concept")
        return figure_to_data_uri(fig)


# --------------------------------------------------------------------------- sensitivity


@_cached
def sensitivity_lines(series: Sequence[tuple[str, Sequence[float], Sequence[float], Sequence[float], str | None]],
                      xlabel: str, width: float = 7.2) -> str:
    """Two panels: mean |AS| (left) and mean IS (right) against a fraction ``x`` (drawn
    as a percentage), one line per model. ``series``: ``(label, x, as_abs, is_, color)``."""
    from matplotlib.figure import Figure

    legend = [short(s[0], LABEL_CHARS) for s in series]
    right = _text_width(legend) + 0.55
    height = 2.6
    with _style():
        fig = Figure(figsize=(width, height), dpi=DPI)
        gap, left, bottom, top = 0.65, 0.6, 0.5, 0.15
        panel = (width - left - right - gap) / 2
        axes = [fig.add_axes((left / width, bottom / height, panel / width, (height - bottom - top) / height)),
                fig.add_axes(((left + panel + gap) / width, bottom / height, panel / width, (height - bottom - top) / height))]
        for i, (label, xs, as_abs, is_, color) in enumerate(series):
            c = color or MODEL_COLORS[i % len(MODEL_COLORS)]
            x = np.asarray(xs, dtype=float)
            order = np.argsort(x, kind="stable")
            for ax, ys in zip(axes, (as_abs, is_)):
                y = np.asarray([np.nan if v is None else v for v in ys], dtype=float)
                ax.plot(x[order], y[order], marker="o", markersize=3.5, linewidth=1.3, color=c, label=short(label, LABEL_CHARS))
        axes[0].set_ylabel("mean |AS| (°)")
        axes[1].set_ylabel("mean IS (°)")
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        for ax in axes:
            ax.set_xlabel(xlabel)
            ax.set_ylim(bottom=0)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{100 * v:.3g}%"))
        axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, borderaxespad=0.2)
        return figure_to_data_uri(fig)
