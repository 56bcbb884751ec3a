"""The report section of the ``steering`` probe (beside it, registered by
:mod:`sing_audit.builtins.steering_probe`). Its template, ``section_steering.html.j2``,
stays in the top-level ``report_templates/`` with every built-in template: one folder a
user's ``report.templates`` overrides by name, and ``default:`` reaches from there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sing_audit.palette import model_label
from sing_audit.probes import probe_summary
from sing_audit.report import ReportSection
from sing_audit.builtins.steering_probe import SteeringSummary

__all__ = ["SteeringSection"]


class SteeringSection(ReportSection):
    """Steering within the null space: AS toward each target prompt per model (mean ± std),
    the step ε and the logit drift it caused (≈ 0 under the exact rank rule).

    Reads each model's :class:`~sing_audit.builtins.steering_probe.SteeringSummary`.

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
    def _summary(m) -> SteeringSummary | None:
        return probe_summary(m, SteeringSummary)

    @classmethod
    def _targets(cls, m) -> list[dict]:
        """The prompts' results as the template reads them (the keys the probe gave)."""
        summary = cls._summary(m)
        return [t.model_dump(exclude_unset=True) for t in summary.targets] if summary is not None else []

    def names(self, result) -> list[str]:
        return [x for m in result.models if (s := self._summary(m)) is not None for x in s.names()]

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
                if summary is not None:
                    notes.append(f"{model_label(result, m)}: {summary.note or 'no steering targets'}")
                continue
            drifts = [t.get("logit_drift") for t in ts if t.get("logit_drift") is not None]
            eps = [t.get("epsilon") for t in ts if t.get("epsilon") is not None]
            rows.append({
                "i": i, "label": model_label(result, m), "mode": summary.epsilon_mode,
                "epsilon": summary.epsilon if "epsilon" in summary.model_fields_set else (eps[0] if eps else None),
                "drift": max(drifts) if drifts else None,
                "zero": summary.zero_directions,
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
