"""The built-in sections of the report about the audit itself, registered like any
third-party section (a probe's own section sits beside the probe, e.g.
:mod:`sing_audit.builtins.steering_section`).

Each is a :class:`sing_audit.report.ReportSection` with its own template in the top-level
``report_templates/``. They read only the typed result and files it names inside the
run folder; a probe's summary only through its model (:func:`sing_audit.probes.probe_summary`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sing_audit import plots
from sing_audit.builtins.nullspace_validation import NullspaceValidationSummary
from sing_audit.builtins.principal_consistency import PrincipalConsistencySummary
from sing_audit.builtins.rank_sensitivity import RankSensitivitySummary
from sing_audit.hookspecs import hookimpl
from sing_audit.palette import model_color, model_label
from sing_audit.probes import probe_summary
from sing_audit.report import NAME_CHARS, ReportSection, embed_image, read_images_csv, short_name
from sing_audit.report_sections import sorted_classes
from sing_audit.stats import MIN_OUTLIER_VALUES

#: per-class rows the pdf keeps per model (plus every flagged, outlier and waived class)
PRINT_CLASS_ROWS = 40
#: classes shown in the violin plot: the most leaking and the least leaking
VIOLIN_TOP = 6
VIOLIN_BOTTOM = 3
#: flagged classes named in the IS-vs-AS scatter (the most leaking, over all models)
SCATTER_LABELS = 6
#: thresholds per table of the rank-sensitivity grid: a longer grid is split into several
#: tables (each with the model column) so that every table fits the printed page's width
SENSITIVITY_COLUMNS = 5
#: translator null-space energy below which the audit warns that leakage may be hidden
LOW_TRANSLATOR_NULL_ENERGY = 0.05


# --------------------------------------------------------------------------- 1. verdict


class VerdictSection(ReportSection):
    """Pass or fail against the policy, per model: flagged classes, IS/AS ratio, one sentence."""

    key = "verdict"
    title = "Verdict"
    order = 10
    template = "section_verdict.html.j2"

    def context(self, result, run_dir: Path) -> dict[str, Any]:
        p = result.policy or {}
        rows = [{"m": m, "label": model_label(result, m)} for m in result.models]
        return {
            "rows": rows,
            "p": p,
            "n_failed": sum(m.outcome == "failed" for m in result.models),
            "n_not_assessed": sum(not m.assessed for m in result.models),
            "min_outlier_classes": MIN_OUTLIER_VALUES,
        }


# --------------------------------------------------------------------------- 2. model comparison


class ModelComparisonSection(ReportSection):
    """IS versus AS per class and model, IS/AS ratio with its interval, null space per model.

    Also shows ``result.model_comparisons`` (pairwise tests) and, when the probe ran,
    ``model.probes["rank_sensitivity"]``: ``{"rule": str, "points": [{"value", "rank",
    "null_dim", "null_energy", "is_mean", "as_abs_mean", "logit_drift_mean",
    "prediction_agreement"}, ...]}`` — IS and |AS| against the null fraction.
    """

    key = "models"
    title = "Model comparison"
    order = 20
    template = "section_models.html.j2"

    def context(self, result, run_dir: Path) -> dict[str, Any]:
        series = []
        # name the most leaking flagged classes, at most SCATTER_LABELS in all (labels pile up otherwise)
        candidates = []
        for mi, m in enumerate(result.models):
            for ci, c in enumerate(m.classes):
                if c.flagged and not c.waived and c.as_abs_mean is not None:
                    candidates.append((-c.as_abs_mean, mi, ci))
        chosen = sorted(candidates)[:SCATTER_LABELS]
        for mi, m in enumerate(result.models):
            cls = m.classes
            series.append(
                plots.ScatterSeries(
                    label=model_label(result, m),
                    is_means=[np.nan if c.is_mean is None else c.is_mean for c in cls],
                    as_means=[np.nan if c.as_mean is None else c.as_mean for c in cls],
                    flagged=[c.flagged and not c.waived for c in cls],
                    names=[c.name for c in cls],
                    color=model_color(result, m),
                    annotate=[ci for _, mj, ci in chosen if mj == mi],
                )
            )
        scatter = plots.scatter_is_as(series) if any(len(s.is_means) for s in series) else None
        labels = [model_label(result, m) for m in result.models]
        bars = plots.ratio_bars(
            labels,
            [m.is_as_ratio for m in result.models],
            [m.is_as_ratio_ci.low for m in result.models],
            [m.is_as_ratio_ci.high for m in result.models],
            [model_color(result, m) for m in result.models],
        ) if result.models else None
        rows = [{"m": m, "label": labels[i], "color": model_color(result, m)} for i, m in enumerate(result.models)]
        pairs = list(getattr(result, "model_comparisons", None) or [])
        sensitivity = self._sensitivity(result)
        return {
            "rows": rows,
            "pairs": pairs,
            "sensitivity": sensitivity,
            "scatter": scatter,
            "min_ellipse_classes": plots.MIN_ELLIPSE_CLASSES,
            "bars": bars,
            "no_null": [r for r in rows if r["m"].null_dim == 0],
            "approximate": [r for r in rows if not r["m"].exact_null and r["m"].null_dim > 0],
        }


    @staticmethod
    def _sensitivity(result) -> dict | None:
        """The ``rank_sensitivity`` probe's points, as a chart against the null fraction and a table."""
        rows, series, rules = [], [], set()
        for m in result.models:
            summary = probe_summary(m, RankSensitivitySummary)
            if summary is None:
                continue
            points = [p.model_dump() for p in summary.points if p.null_dim is not None]
            if not points:
                continue
            rules.add(str(summary.rule or ""))
            label = model_label(result, m)
            frac = [p["null_dim"] / m.num_features if m.num_features else 0.0 for p in points]
            series.append((label, frac, [p.get("as_abs_mean") for p in points], [p.get("is_mean") for p in points],
                           model_color(result, m)))
            rows.append({"label": label, "rule": summary.rule, "points": points, "m": m})
        if not rows:
            return None
        chart = plots.sensitivity_lines(series, "null fraction: null dimension / features")
        values = []
        for r in rows:
            for p in r["points"]:
                if p.get("value") not in values:
                    values.append(p.get("value"))
        grid = [[next((p for p in r["points"] if p.get("value") == v), None) for v in values] for r in rows]
        groups = [list(range(i, min(i + SENSITIVITY_COLUMNS, len(values)))) for i in range(0, len(values), SENSITIVITY_COLUMNS)]
        return {"chart": chart, "rows": rows, "values": values, "grid": grid, "column_groups": groups,
                "rule": " / ".join(sorted(rules))}


# --------------------------------------------------------------------------- 3. per class


class PerClassSection(ReportSection):
    """Per class and model: AS, |AS|, AS contrast and IS with intervals, sorted by leakage;
    per-image AS violins (from the model's ``files["images_csv"]``) for the top and bottom
    classes; flagged, outlier and waived classes marked."""

    key = "classes"
    title = "Per-class analysis"
    order = 30
    template = "section_classes.html.j2"

    def context(self, result, run_dir: Path) -> dict[str, Any]:
        threshold = (result.policy or {}).get("as_threshold")
        models = []
        for m in result.models:
            ordered = sorted_classes(m)
            special = [c for c in ordered if c.flagged or c.outlier or c.waived]
            print_rows = ordered[:PRINT_CLASS_ROWS] + [c for c in ordered[PRINT_CLASS_ROWS:] if c in special]
            entry: dict[str, Any] = {
                "m": m,
                "label": model_label(result, m),
                "rows": ordered,
                "print_rows": print_rows,
                "flagged": [c for c in ordered if c.flagged and not c.waived],
                "outliers": [c for c in ordered if c.outlier],
                "waived": [c for c in ordered if c.waived],
                "violin": None,
                "violin_note": None,
            }
            rel = m.files.get("images_csv")
            table = read_images_csv(run_dir, rel)
            if table is None:
                entry["violin_note"] = (
                    f"Per-image values are not available: {rel} is not in the run folder, so the distribution plot is omitted."
                    if rel else "Per-image values are not available (the result names no per-image file), so the distribution plot is omitted."
                )
            else:
                have = [c for c in ordered if c.index in table.as_by_label and np.isfinite(table.as_by_label[c.index]).any()]
                top = have[:VIOLIN_TOP]
                bottom = [c for c in have[VIOLIN_TOP:][-VIOLIN_BOTTOM:]]
                chosen = top + bottom
                if chosen:
                    counts = [f" (n={table.as_by_label[c.index].size})" for c in chosen]
                    entry["violin"] = plots.violins(
                        # the name is cut, never the image count after it
                        [short_name(c.name, plots.ROW_LABEL_CHARS - len(n)) + n for c, n in zip(chosen, counts)],
                        [table.as_by_label[c.index] for c in chosen],
                        highlight=[c.flagged and not c.waived for c in chosen],
                        threshold=threshold,
                        split=len(top) if bottom else None,
                        color=model_color(result, m),
                    )
                    entry["violin_counts"] = (len(top), len(bottom))
                else:
                    entry["violin_note"] = f"{rel} holds no per-image AS values."
            models.append(entry)
        return {"models": models, "print_limit": PRINT_CLASS_ROWS, "min_outlier_classes": MIN_OUTLIER_VALUES}


# --------------------------------------------------------------------------- 6. trust


class TrustSection(ReportSection):
    """How far to trust the numbers: translator fidelity (and other translator families),
    sanity figures, null-space validation, principal consistency, target agreement.

    Null-space validation reads ``model.probes["nullspace_validation"]``, shaped
    ``{"null": float, "random": float, "principal": float}`` (mean relative logit change
    of equal-norm perturbations; optional ``null_max``, ``passed``, ``rule``), or
    ``{"error": str}`` when the head failed the check. Principal consistency reads
    ``model.probes["principal_consistency"]`` (``accuracy_principal``,
    ``accuracy_translated``) and ``result.probe_aggregates["principal_consistency"]``
    (``pearson_r``).
    """

    key = "trust"
    title = "Trust in the measurement"
    order = 60
    template = "section_trust.html.j2"

    def context(self, result, run_dir: Path) -> dict[str, Any]:
        floor = (result.policy or {}).get("warn_fidelity", 0.5)
        rows, warnings, validation, consistency, families = [], [], [], [], []
        for m in result.models:
            label = model_label(result, m)
            cos = m.fidelity.cosine
            low = cos is not None and floor is not None and cos < floor
            if cos is None:
                warnings.append(f"{label}: the translator's held-out fidelity is unknown.")
            elif low:
                warnings.append(
                    f"{label}: held-out translator cosine {cos:.3f} is below the warning floor {floor:g}; "
                    "the translator explains the target space poorly, so AS and IS are uncertain."
                )
            ne = m.fidelity.null_energy
            if ne is not None and m.null_dim > 0 and ne < LOW_TRANSLATOR_NULL_ENERGY:
                warnings.append(
                    f"{label}: only {ne:.1%} of the translator's energy lies on the null space; a translator blind "
                    "to the null space can hide leakage."
                )
            rows.append({"m": m, "label": label, "low": low})
            validated = probe_summary(m, NullspaceValidationSummary)
            if validated is not None:
                v = validated.model_dump()
                error = v.get("error") or v.get("message")
                validation.append({"m": m, "label": label, "v": v, "error": error})
                if error or v.get("passed") is False:
                    warnings.append(f"{label}: null-space validation failed" + (f": {error}" if error else
                                    ": perturbations inside the null space change the logits."))
            pc = probe_summary(m, PrincipalConsistencySummary)
            if pc is not None:
                consistency.append({"label": label, "pc": pc.model_dump()})
            for tc in getattr(m, "translator_comparison", None) or []:
                families.append({"label": label, "primary": m.fidelity, "m": m, "tc": tc})
        aggregate = (getattr(result, "probe_aggregates", None) or {}).get(PrincipalConsistencySummary.probe) or {}
        return {"rows": rows, "warnings": warnings, "floor": floor, "validation": validation,
                "agreement": result.target_agreement, "consistency": consistency,
                "consistency_r": aggregate.get("pearson_r") if isinstance(aggregate, dict) else None,
                "families": families}


# --------------------------------------------------------------------------- 7. images


class ImageEvidenceSection(ReportSection):
    """The most leaking images per model: thumbnail, class, AS, IS, AS contrast.

    Thumbnails come from ``ImageEvidence.thumbnail`` (a path inside the run folder).
    When a visualizer ran, ``model.probes["renderings"]`` may name renderings, shaped
    ``{"images": {image_id: {"original": path, "equivalent": path}}}`` (paths inside the
    run folder); they are shown side by side. Paths leaving the run folder are skipped.
    """

    key = "images"
    title = "Image-level evidence"
    order = 70
    template = "section_images.html.j2"

    def applies(self, result) -> bool:
        return any(m.top_images for m in result.models)

    def context(self, result, run_dir: Path) -> dict[str, Any]:
        models = []
        for m in result.models:
            if not m.top_images:
                continue
            renders = ((m.probes.get("renderings") or {}).get("images") or {})
            cards = []
            for ev in m.top_images:
                r = renders.get(ev.image_id) if isinstance(renders, dict) else None
                r = r if isinstance(r, dict) else {}
                cards.append({
                    "ev": ev,
                    "thumb": embed_image(run_dir, ev.thumbnail),
                    "original": embed_image(run_dir, r.get("original")),
                    "equivalent": embed_image(run_dir, r.get("equivalent")),
                })
            models.append({"m": m, "label": model_label(result, m), "cards": cards,
                           "any_thumb": any(c["thumb"] for c in cards)})
        return {"models": models}


# --------------------------------------------------------------------------- 8. provenance


def _short_strings(value):
    """``value`` (a config) with every string longer than :data:`NAME_CHARS` cut for display,
    keeping the end of paths; the configuration itself is in results.json and config.resolved.yaml.
    It holds user-controlled names (steering pairs, waivers, class names), printed here like
    everywhere else in the report."""
    if isinstance(value, str):
        return short_name(value, keep_end="/" in value or "\\" in value) if len(value) > NAME_CHARS else value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            shown = _short_strings(k)
            out[k if shown in out else shown] = _short_strings(v)  # two keys cut alike: keep the second whole
        return out
    if isinstance(value, (list, tuple)):
        return [_short_strings(v) for v in value]
    return value


class ProvenanceSection(ReportSection):
    """What was run: resolved config, package versions, weights and data digests, seeds, timing."""

    key = "provenance"
    title = "Provenance"
    order = 80
    template = "section_provenance.html.j2"
    MAX_SKIPPED = 50

    def context(self, result, run_dir: Path) -> dict[str, Any]:
        prov = result.provenance
        config, dataset = _short_strings(prov.config), _short_strings(prov.dataset)
        config_yaml = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=100) if config else ""
        dataset_yaml = yaml.safe_dump(dataset, sort_keys=False, allow_unicode=True, width=100) if dataset else ""
        total = sum(prov.stage_seconds.values()) if prov.stage_seconds else 0.0
        return {
            "prov": prov,
            "config_yaml": config_yaml,
            "dataset_yaml": dataset_yaml,
            "models": [{"m": m, "label": model_label(result, m)} for m in result.models],
            "total_seconds": total,
            "skipped": prov.skipped_images[: self.MAX_SKIPPED],
            "skipped_more": max(0, len(prov.skipped_images) - self.MAX_SKIPPED),
        }


BUILTIN_SECTIONS = (
    VerdictSection,
    ModelComparisonSection,
    PerClassSection,
    TrustSection,
    ImageEvidenceSection,
    ProvenanceSection,
)


@hookimpl
def register_report_sections(register):
    for cls in BUILTIN_SECTIONS:
        register(cls.key, cls)
