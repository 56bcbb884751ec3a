"""The built-in sections of the report, registered like any third-party section.

Each is a :class:`sing_audit.report.ReportSection` with its own template in
``sing_audit/report_templates/``. They read only the typed result and files it names
inside the run folder. Optional sections (concepts, steering) document the probe
summary shape they read in their docstring.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sing_audit import plots
from sing_audit.hookspecs import hookimpl
from sing_audit.report import NAME_CHARS, ReportSection, embed_image, read_images_csv, short_name
from sing_audit.stats import MIN_OUTLIER_VALUES

#: per-class rows the pdf keeps per model (plus every flagged, outlier and waived class)
PRINT_CLASS_ROWS = 40
#: classes shown in the violin plot: the most leaking and the least leaking
VIOLIN_TOP = 6
VIOLIN_BOTTOM = 3
#: classes of the concept section (table) and of its chart
CONCEPT_CLASSES = 15
CONCEPT_CHART_CLASSES = 4
CONCEPTS_PER_CLASS = 5
#: flagged classes named in the IS-vs-AS scatter (the most leaking, over all models)
SCATTER_LABELS = 6
#: translator null-space energy below which the audit warns that leakage may be hidden
LOW_TRANSLATOR_NULL_ENERGY = 0.05


def _multi_target(result) -> bool:
    return len({m.target for m in result.models}) > 1


def model_label(result, m) -> str:
    """``name`` (or ``name · target`` when the audit has several targets)."""
    return f"{m.name} · {m.target}" if _multi_target(result) else m.name


def model_color(result, m) -> str:
    i = next((k for k, x in enumerate(result.models) if x is m), 0)
    return plots.MODEL_COLORS[i % len(plots.MODEL_COLORS)]


def _abs_key(c) -> float:
    return -(c.as_abs_mean if c.as_abs_mean is not None else -math.inf)


def sorted_classes(m) -> list:
    """Classes by mean |AS|, largest first (undefined last)."""
    return sorted(m.classes, key=lambda c: (c.as_abs_mean is None, _abs_key(c), c.index))


def _fmt_num(v, digits=2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


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
            "bars": bars,
            "no_null": [r for r in rows if r["m"].null_dim == 0],
            "approximate": [r for r in rows if r["m"].rank_rule != "rank" and r["m"].null_dim > 0],
        }


    @staticmethod
    def _sensitivity(result) -> dict | None:
        """The ``rank_sensitivity`` probe's points, as a chart against the null fraction and a table."""
        rows, series, rules = [], [], set()
        for m in result.models:
            summary = m.probes.get("rank_sensitivity")
            points = summary.get("points") if isinstance(summary, dict) else None
            if not isinstance(points, list):
                continue
            points = [p for p in points if isinstance(p, dict) and p.get("null_dim") is not None]
            if not points:
                continue
            rules.add(str(summary.get("rule", "")))
            label = model_label(result, m)
            frac = [p["null_dim"] / m.num_features if m.num_features else 0.0 for p in points]
            series.append((label, frac, [p.get("as_abs_mean") for p in points], [p.get("is_mean") for p in points],
                           model_color(result, m)))
            rows.append({"label": label, "rule": summary.get("rule"), "points": points, "m": m})
        if not rows:
            return None
        chart = plots.sensitivity_lines(series, "null fraction: null dimension / features")
        values = []
        for r in rows:
            for p in r["points"]:
                if p.get("value") not in values:
                    values.append(p.get("value"))
        grid = [[next((p for p in r["points"] if p.get("value") == v), None) for v in values] for r in rows]
        return {"chart": chart, "rows": rows, "values": values, "grid": grid, "rule": " / ".join(sorted(rules))}


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


# --------------------------------------------------------------------------- 4. concepts


class ConceptsSection(ReportSection):
    """Open-vocabulary concepts: per class, the concepts with the largest |AS|.

    Reads ``model.probes["concepts"]`` of each model, shaped::

        {"per_class": {class_name: [{"concept": str, "as": float, "angle": float}, ...]}}

    ``as`` is the AS toward the concept's text embedding (degrees), ``angle`` the angle
    between the translated feature T(f) and that embedding (degrees, may be ``null``).
    Optional keys, shown when present (the ``concepts`` probe writes them): ``sets``
    (``[{"name", "version", "size"}]``), ``n_concepts`` and ``model_top``
    (``[{"concept", "as"}]``, the model's top concepts over all images).
    Rendered only when at least one model has a non-empty ``per_class``.
    """

    key = "concepts"
    title = "Open-vocabulary concepts"
    order = 40
    template = "section_concepts.html.j2"

    @staticmethod
    def _per_class(m) -> dict:
        per = (m.probes.get("concepts") or {}).get("per_class") or {}
        return per if isinstance(per, dict) else {}

    def applies(self, result) -> bool:
        return any(self._per_class(m) for m in result.models)

    def context(self, result, run_dir: Path) -> dict[str, Any]:
        models = []
        for m in result.models:
            per = self._per_class(m)
            if not per:
                continue
            summary = m.probes.get("concepts") or {}
            by_name = {c.name: c for c in m.classes}
            rank = {c.name: i for i, c in enumerate(sorted_classes(m))}

            def top(items):
                good = [x for x in items if isinstance(x, dict) and x.get("as") is not None]
                return sorted(good, key=lambda x: -abs(float(x["as"])))[:CONCEPTS_PER_CLASS]

            classes = [(str(name), top(items or [])) for name, items in per.items() if isinstance(items, list)]
            classes = [(n, it) for n, it in classes if it]
            classes.sort(key=lambda t: (rank.get(t[0], math.inf), -abs(float(t[1][0]["as"]))))
            shown = classes[:CONCEPT_CLASSES]
            charted = shown[:CONCEPT_CHART_CLASSES]
            chart = plots.concept_bars(
                [(name, [(str(x.get("concept", "")), float(x["as"]), x.get("angle")) for x in items]) for name, items in charted]
            ) if charted else None
            sets = [x for x in summary.get("sets") or [] if isinstance(x, dict)]
            model_top = [x for x in summary.get("model_top") or [] if isinstance(x, dict) and x.get("as") is not None]
            models.append({
                "m": m, "label": model_label(result, m), "chart": chart, "chart_classes": len(charted),
                "classes": [{"name": n, "concepts": it, "as_abs": getattr(by_name.get(n), "as_abs_mean", None)} for n, it in shown],
                "more": len(classes) - len(shown), "sets": sets, "n_concepts": summary.get("n_concepts"),
                "model_top": model_top[:8],
            })
        return {"models": models}


# --------------------------------------------------------------------------- 5. steering


class SteeringSection(ReportSection):
    """Steering within the null space: AS toward each target prompt per model (mean ± std),
    the step ε and the logit drift it caused (≈ 0 under the exact rank rule).

    Reads ``model.probes["steering"]`` of each model (the ``steering`` probe's summary)::

        {"epsilon_mode": str, "epsilon": float, "note": str (optional),
         "targets": [{"prompt": str, "as_mean": float, "as_std": float,
                      "epsilon": float, "logit_drift": float,
                      # optional: "source": str, "n": int, "is_mean": float,
                      #           "zero_directions": int}, ...]}

    Laid out like the SING paper's Table 1: one row per model, one column per prompt,
    then ε and the largest logit drift. With more than five prompts the table is
    transposed (one row per prompt); the pdf keeps the prompts with the largest |AS|.
    Rendered only when at least one model has a non-empty ``targets`` list.
    """

    key = "steering"
    title = "Steering"
    order = 50
    template = "section_steering.html.j2"
    MAX_PROMPT_COLUMNS = 5
    PRINT_PROMPTS = 30

    @staticmethod
    def _summary(m) -> dict:
        s = m.probes.get("steering")
        return s if isinstance(s, dict) else {}

    @classmethod
    def _targets(cls, m) -> list:
        t = cls._summary(m).get("targets") or []
        return [x for x in t if isinstance(x, dict) and "prompt" in x] if isinstance(t, list) else []

    def applies(self, result) -> bool:
        return any(self._targets(m) for m in result.models)

    def context(self, result, run_dir: Path) -> dict[str, Any]:
        columns: list[tuple[str, str]] = []  # (prompt, source)
        cells: dict[tuple[int, tuple[str, str]], dict] = {}
        rows, notes = [], []
        for i, m in enumerate(result.models):
            summary = self._summary(m)
            ts = self._targets(m)
            if not ts:
                if summary:
                    notes.append(f"{model_label(result, m)}: {summary.get('note') or 'no steering targets'}")
                continue
            drifts = [t.get("logit_drift") for t in ts if t.get("logit_drift") is not None]
            eps = [t.get("epsilon") for t in ts if t.get("epsilon") is not None]
            rows.append({
                "i": i, "label": model_label(result, m), "mode": summary.get("epsilon_mode"),
                "epsilon": summary.get("epsilon", eps[0] if eps else None),
                "drift": max(drifts) if drifts else None,
                "zero": summary.get("zero_directions"),
            })
            for t in ts:
                col = (str(t["prompt"]), str(t.get("source") or ""))
                if col not in columns:
                    columns.append(col)
                cells[(i, col)] = t
        grid = [[cells.get((r["i"], col)) for col in columns] for r in rows]

        def strength(j: int) -> float:
            vals = [abs(row[j]["as_mean"]) for row in grid if row[j] is not None and row[j].get("as_mean") is not None]
            return max(vals) if vals else -1.0

        transposed = len(columns) > self.MAX_PROMPT_COLUMNS
        order = sorted(range(len(columns)), key=lambda j: -strength(j)) if transposed else list(range(len(columns)))
        return {
            "columns": columns, "rows": rows, "grid": grid, "transposed": transposed, "notes": notes,
            "order": order, "print_order": order[: self.PRINT_PROMPTS],
        }


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
            v = m.probes.get("nullspace_validation")
            if isinstance(v, dict) and v:
                error = v.get("error") or v.get("message")
                validation.append({"m": m, "label": label, "v": v, "error": error})
                if error or v.get("passed") is False:
                    warnings.append(f"{label}: null-space validation failed" + (f": {error}" if error else
                                    ": perturbations inside the null space change the logits."))
            pc = m.probes.get("principal_consistency")
            if isinstance(pc, dict) and pc:
                consistency.append({"label": label, "pc": pc})
            for tc in getattr(m, "translator_comparison", None) or []:
                families.append({"label": label, "primary": m.fidelity, "m": m, "tc": tc})
        aggregate = (getattr(result, "probe_aggregates", None) or {}).get("principal_consistency") or {}
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
    ConceptsSection,
    SteeringSection,
    TrustSection,
    ImageEvidenceSection,
    ProvenanceSection,
)


@hookimpl
def register_reporters(register):
    for cls in BUILTIN_SECTIONS:
        register(f"section:{cls.key}", cls)
