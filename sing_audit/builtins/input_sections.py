"""The report section of the input-space probes: ``input_space``, beside them.

Reads, per model, the summaries the probes of :mod:`sing_audit.builtins.input_probes`
store under ``model.probes``:

- ``patch_embed_null`` (:class:`~sing_audit.builtins.input_probes.PatchEmbedNullSummary`):
  null dimension of the patch embedding (full and per colour channel), relative logit
  change of the equivalent images against a norm-matched permuted control, how much of the
  invariance survives 8-bit quantisation, rendered example pairs (``data:image/png``
  URIs in the summary; anything else is not rendered), and ``target_semantics``.
- ``encoder_null``: norm of the learned noise after the patch embedding, its logit change
  and agreement against a random noise of the same norm.
- ``embedding_match``: pixel change of matched images, convergence, which class the
  classifier decides, and ``target_semantics``.
- ``jacobian``: the mean singular values (a small chart) and directional Lipschitz
  constants.

``target_semantics`` is the IS/AS of the equivalent images under the target's own
image encoder, or the reason it was not measured. The section appears only when at least
one of these probes ran on some model; it reads nothing but the typed result.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from sing_audit import figures, plots
from sing_audit.hookspecs import hookimpl
from sing_audit.palette import model_color, model_label
from sing_audit.report import ReportSection

__all__ = ["INPUT_PROBES", "InputSpaceSection", "spectrum_chart", "spectrum_figure"]

#: the probes this section reads, in the order they are shown
INPUT_PROBES = ("patch_embed_null", "encoder_null", "embedding_match", "jacobian")

#: example pairs shown per model
MAX_EXAMPLES = 4
#: singular values drawn per model
MAX_SINGULAR_VALUES = 256

_PNG_URI = re.compile(r"^data:image/png;base64,[A-Za-z0-9+/]+={0,2}$")


def _dict(value) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _png(uri) -> str | None:
    """``uri`` when it is a base64 PNG data URI (the only pictures the section embeds)."""
    return uri if isinstance(uri, str) and len(uri) < 4_000_000 and _PNG_URI.match(uri) else None


def _stat(d: dict, key: str) -> dict[str, float | None]:
    s = _dict(d.get(key))
    return {"mean": _num(s.get("mean")), "max": _num(s.get("max"))}


def _semantics(d: dict) -> dict[str, Any] | None:
    ts = d.get("target_semantics")
    if not isinstance(ts, dict):
        return None
    return {
        "target": ts.get("target"),
        "scored": bool(ts.get("scored")),
        "reason": ts.get("reason"),
        "n": ts.get("n_images"),
        "is_mean": _num(ts.get("is_mean")),
        "is_max": _num(ts.get("is_max")),
        "as_mean": _num(ts.get("as_mean")),
        "as_abs_mean": _num(ts.get("as_abs_mean")),
        "as_other_mean": _num(ts.get("as_other_mean")),
        "images": {str(i.get("image_id")): i for i in ts.get("images") or [] if isinstance(i, dict)},
    }


def _patch(d: dict) -> dict[str, Any]:
    sem = _semantics(d)
    examples = []
    for ex in d.get("examples") or []:
        if not isinstance(ex, dict):
            continue
        orig, equiv = _png(ex.get("original_png")), _png(ex.get("equivalent_png"))
        if orig is None or equiv is None:
            continue
        image_id = str(ex.get("image_id", ""))
        score = (sem or {}).get("images", {}).get(image_id) if sem else None
        examples.append({
            "image_id": image_id, "original": orig, "equivalent": equiv, "difference": _png(ex.get("difference_png")),
            "is": _num((score or {}).get("image_score")), "as": _num((score or {}).get("attribute_score")),
        })
        if len(examples) >= MAX_EXAMPLES:
            break
    dims = d.get("channel_null_dims")
    return {
        "patch_size": d.get("patch_size"), "embed_dim": d.get("embed_dim"), "patch_dim": d.get("patch_dim"),
        "rank": d.get("rank"), "null_dim": d.get("null_dim"),
        "channel_null_dims": [x for x in dims if isinstance(x, int)] if isinstance(dims, list) else [],
        "mode": d.get("mode"), "n": d.get("n_images"), "exact": d.get("exact"), "tolerance": _num(d.get("tolerance")),
        "pixel_l2": _stat(d, "pixel_l2"), "pixel_linf": _stat(d, "pixel_linf"),
        "null_drift": _stat(d, "null_drift"), "null_agreement": _num(d.get("null_agreement")),
        "control_drift": _stat(d, "control_drift"), "control_agreement": _num(d.get("control_agreement")),
        "quantised_drift": _stat(d, "quantised_drift"), "quantised_agreement": _num(d.get("quantised_agreement")),
        "quantised_exact": _num(d.get("quantised_exact")),
        "original_quantised_drift": _stat(d, "original_quantised_drift"),
        "examples": examples, "semantics": sem,
    }


def _encoder(d: dict) -> dict[str, Any]:
    keys = ("norm", "relative_norm", "tolerance", "fit_drift", "fit_agreement", "heldout_drift", "heldout_agreement",
            "control_drift", "control_agreement")
    out: dict[str, Any] = {k: _num(d.get(k)) for k in keys}
    out.update(per_token=d.get("per_token"), n_fit=d.get("n_fit"), n_heldout=d.get("n_heldout"))
    return out


def _match(d: dict) -> dict[str, Any]:
    return {
        "n": d.get("n_pairs"), "converged": _num(d.get("converged")),
        "pixel_l2": _stat(d, "pixel_l2"), "pixel_linf": _stat(d, "pixel_linf"), "psnr": _num(d.get("psnr_mean")),
        "distance_before": _stat(d, "distance_before"), "distance_after": _stat(d, "distance_after"),
        "cosine_after": _stat(d, "cosine_after"), "steps": _num(d.get("steps_mean")),
        "takes_target_class": _num(d.get("takes_target_class")), "keeps_source_class": _num(d.get("keeps_source_class")),
        "semantics": _semantics(d),
    }


def _floats(values) -> list[float | None]:
    return [_num(v) for v in values] if isinstance(values, list) else []


def _jacobian(d: dict) -> dict[str, Any]:
    eps = _floats(d.get("eps"))
    rows = []
    for key, label in (("lipschitz_top", "top singular direction"), ("lipschitz_random", "random direction"),
                       ("lipschitz_null", "null direction")):
        vals = _floats(d.get(key))
        rows.append({"label": label, "values": (vals + [None] * len(eps))[: len(eps)]})
    sv = [v for v in _floats(d.get("singular_values_mean")) if v is not None]
    ranks = [r for r in d.get("numerical_rank") or [] if isinstance(r, int)]
    return {
        "output": d.get("output"), "method": d.get("method"), "exact": d.get("exact"), "n": d.get("n_images"),
        "input_dim": d.get("input_dim"), "output_dim": d.get("output_dim"),
        "rank_min": min(ranks) if ranks else None, "rank_max": max(ranks) if ranks else None,
        "sigma_max": sv[0] if sv else None, "sigma_min": sv[-1] if sv else None, "n_sigma": len(sv),
        "eps": eps, "lipschitz": rows, "top_over_random": _num(d.get("top_over_random")), "singular_values": sv,
    }


def spectrum_chart(series: list[tuple[str, list[float], str]], width: float = 5.6, height: float = 2.4) -> str | None:
    """Mean singular values of the input Jacobian, one line per model (log scale): a data URI."""
    series = [(label, [v for v in sv[:MAX_SINGULAR_VALUES] if v > 0], color) for label, sv, color in series]
    series = [s for s in series if s[1]]
    if not series:
        return None
    with figures.chart_style():
        return figures.figure_to_data_uri(spectrum_figure(series, width, height))


def spectrum_figure(series: list[tuple[str, list[float], str]], width: float = 5.6, height: float = 2.4):
    """The figure of :func:`spectrum_chart` (positive singular values only), its left margin
    measured from the tick labels so that the y-label is drawn whole."""
    from matplotlib.figure import Figure

    with figures.chart_style():
        fig = Figure(figsize=(width, height), dpi=figures.DPI)
        ax = fig.add_subplot()
        for label, sv, color in series:
            ax.plot(range(1, len(sv) + 1), sv, linewidth=1.3, color=color, label=plots.short(label, plots.LABEL_CHARS))
        ax.set_yscale("log")
        figures.use_log_ticks(ax.yaxis)
        ax.set_xlabel("index of the singular value")
        ax.set_ylabel("σ of ∂f/∂x")
        ax.legend(loc="upper right", frameon=False)
        ticks = [figures.log_tick_label(v) for v in ax.get_yticks()]
        # tick labels, the tick length and pad, the rotated y-label (its line height) and a margin
        left = plots._text_width(ticks) + 0.08 + 1.6 * figures.LABEL_PT / 72 + 0.08
        fig.subplots_adjust(left=left / width, right=0.97, top=0.93, bottom=0.45 / height)
        return fig


class InputSpaceSection(ReportSection):
    """Input-space probes per model: patch-embedding null space, encoder null space,
    embedding matching, Jacobian spectrum, and the semantics of equivalent images under the
    target's image encoder."""

    key = "input_space"
    title = "Input-space invariance"
    order = 75
    template = "section_input_space.html.j2"

    @staticmethod
    def _ran(m) -> dict[str, dict]:
        return {p: m.probes[p] for p in INPUT_PROBES if isinstance(m.probes.get(p), dict) and m.probes.get(p)}

    def applies(self, result) -> bool:
        return any(self._ran(m) for m in result.models)

    def context(self, result, run_dir: Path) -> dict[str, Any]:
        models, spectra = [], []
        for m in result.models:
            ran = self._ran(m)
            if not ran:
                continue
            label = model_label(result, m)
            entry = {
                "m": m, "label": label,
                "patch": _patch(ran["patch_embed_null"]) if "patch_embed_null" in ran else None,
                "encoder": _encoder(ran["encoder_null"]) if "encoder_null" in ran else None,
                "match": _match(ran["embedding_match"]) if "embedding_match" in ran else None,
                "jacobian": _jacobian(ran["jacobian"]) if "jacobian" in ran else None,
            }
            if entry["jacobian"] and entry["jacobian"]["singular_values"]:
                spectra.append((label, entry["jacobian"]["singular_values"], model_color(result, m)))
            models.append(entry)
        return {"models": models, "spectrum": spectrum_chart(spectra)}


@hookimpl
def register_report_sections(register):
    register(InputSpaceSection.key, InputSpaceSection)
