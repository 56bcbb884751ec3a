"""The report section of the ``concepts`` probe (beside it, registered by
:mod:`sing_audit.builtins.concepts_probe`). Its template, ``section_concepts.html.j2``,
stays in the top-level ``report_templates/`` with every built-in template: one folder a
user's ``report.templates`` overrides by name, and ``default:`` reaches from there."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sing_audit import plots
from sing_audit.palette import model_label
from sing_audit.probes import probe_summary
from sing_audit.report import ReportSection
from sing_audit.report_sections import sorted_classes
from sing_audit.builtins.concepts_probe import ConceptsSummary

__all__ = ["ConceptsSection"]

#: classes of the concept section (table) and of its chart
CONCEPT_CLASSES = 15
CONCEPT_CHART_CLASSES = 4
CONCEPTS_PER_CLASS = 5


class ConceptsSection(ReportSection):
    """Open-vocabulary concepts: per class, the concepts with the largest |AS|.

    Reads each model's :class:`~sing_audit.builtins.concepts_probe.ConceptsSummary`:
    ``per_class`` (the AS toward each concept's text embedding and the angle between
    T(f) and it, degrees), and when present ``sets``, ``n_concepts`` and ``model_top``
    (the model's top concepts over all images), and beside ours the SING authors' ranking
    (``authors_per_class``, ``authors_model_top``: change of cosine, labelled as theirs).
    Rendered only when at least one model has a non-empty ``per_class``.
    """

    key = "concepts"
    title = "Open-vocabulary concepts"
    order = 40
    template = "section_concepts.html.j2"

    @staticmethod
    def _summary(m) -> ConceptsSummary:
        return probe_summary(m, ConceptsSummary) or ConceptsSummary()

    @classmethod
    def _per_class(cls, m) -> dict[str, list[dict]]:
        """Per class, its concepts as the template reads them (``concept``, ``as``, ``angle``)."""
        return {k: [x.model_dump(by_alias=True, exclude_unset=True) for x in v] for k, v in cls._summary(m).per_class.items()}

    def names(self, result) -> list[str]:
        return [x for m in result.models for x in self._summary(m).names()]

    def applies(self, result) -> bool:
        return any(self._per_class(m) for m in result.models)

    def context(self, result, run_dir: Path) -> dict[str, Any]:
        models = []
        for m in result.models:
            per = self._per_class(m)
            if not per:
                continue
            summary = self._summary(m)
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
            sets = list(summary.sets)
            model_top = [x.model_dump(by_alias=True, exclude_unset=True) for x in summary.model_top if x.as_ is not None]
            # the SING authors' ranking beside ours (their dcos, by magnitude), when recorded
            theirs = {k: [x.model_dump(exclude_unset=True) for x in v if x.dcos is not None][:CONCEPTS_PER_CLASS]
                      for k, v in summary.authors_per_class.items()}
            authors_top = [x.model_dump(exclude_unset=True) for x in summary.authors_model_top if x.dcos is not None]
            models.append({
                "m": m, "label": model_label(result, m), "chart": chart, "chart_classes": len(charted),
                "classes": [{"name": n, "concepts": it, "as_abs": getattr(by_name.get(n), "as_abs_mean", None),
                             "authors": theirs.get(n, [])} for n, it in shown],
                "has_authors": bool(theirs), "authors_top": authors_top[:8],
                "more": len(classes) - len(shown), "sets": sets, "n_concepts": summary.n_concepts,
                "model_top": model_top[:8],
            })
        return {"models": models}
