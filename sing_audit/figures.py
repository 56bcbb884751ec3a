"""The matplotlib plumbing of the report's charts: their style, PNG ``data:`` URIs, and a
cache keyed by a chart's inputs. The charts themselves are in :mod:`sing_audit.plots`;
a third-party section draws its own figure with :func:`chart_style` and
:func:`figure_to_data_uri`."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import pickle
import warnings
from contextlib import contextmanager

import numpy as np

__all__ = ["DPI", "LABEL_PT", "TICK_PT", "cached", "chart_style", "figure_to_data_uri", "log_tick_label", "use_log_ticks"]

DPI = 130
TICK_PT = 8.0
LABEL_PT = 8.5


@contextmanager
def chart_style():
    """The charts' matplotlib settings (literal text, small fonts, light grid), as a context."""
    import matplotlib

    rc = {
        "text.parse_math": False,
        "font.size": LABEL_PT,
        "axes.labelsize": LABEL_PT,
        "xtick.labelsize": TICK_PT,
        "ytick.labelsize": TICK_PT,
        "legend.fontsize": TICK_PT,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.color": "#e3e3e3",
        "grid.linewidth": 0.6,
        "figure.facecolor": "white",
        "axes.facecolor": "white",
        "savefig.facecolor": "white",
    }
    with matplotlib.rc_context(rc), warnings.catch_warnings():
        # glyphs missing from the font (emoji in a class name) draw as boxes; no need to warn
        warnings.filterwarnings("ignore", message=".*[Gg]lyph.*missing.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="matplotlib")
        yield


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def log_tick_label(value: float) -> str:
    """A log axis's tick label as plain text: ``10⁻³`` for a power of ten, else ``0.25``.

    matplotlib's log formatters write mathtext (``$\\mathdefault{10^{0}}$``), which the
    charts draw literally (``text.parse_math`` is off so that names are drawn as typed):
    log axes take this label instead, through :func:`use_log_ticks`.
    """
    if not np.isfinite(value) or value <= 0:
        return ""
    exponent = float(np.log10(value))
    if abs(exponent - round(exponent)) < 1e-9:
        return "10" + str(int(round(exponent))).translate(_SUPERSCRIPT)
    return f"{value:.2g}"


def use_log_ticks(axis) -> None:
    """Label a log-scaled ``axis`` (``ax.yaxis``) in plain text: powers of ten at the major
    ticks, and the minor ticks too when the view spans less than a decade (no power of ten
    would be labelled otherwise)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _pos: log_tick_label(v)))
    axis.axes.viewLim  # noqa: B018 - applies a pending autoscale, so the view interval is current
    low, high = sorted(axis.get_view_interval())
    narrow = low > 0 and np.floor(np.log10(high)) == np.floor(np.log10(low))
    axis.set_minor_formatter(FuncFormatter(lambda v, _pos: log_tick_label(v)) if narrow else NullFormatter())


def figure_to_data_uri(fig, colors: int = 128) -> str:
    """A ``data:image/png`` URI of ``fig``, palette-quantised to stay small.

    The figure is drawn once into memory (no PNG round trip) and quantised with the fast
    octree method: charts have few colours, so 128 keep them faithful.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
    small = rgb.quantize(colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    out = io.BytesIO()
    small.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


_CACHE: dict[str, str] = {}
_CACHE_SIZE = 64


def cached(fn):
    """Memoise a chart by the content of its inputs: the html and pdf reporters of one
    run draw the same charts, and drawing is the slow part of rendering."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            blob = pickle.dumps((fn.__name__, args, sorted(kwargs.items())), protocol=4)
        except Exception:  # noqa: BLE001 - unpicklable input: just draw
            return fn(*args, **kwargs)
        key = hashlib.sha256(blob).hexdigest()
        if key not in _CACHE:
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = fn(*args, **kwargs)
        return _CACHE[key]

    return wrapper
