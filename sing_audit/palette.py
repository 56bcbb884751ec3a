"""Model colours and labels, shared by the charts (:mod:`sing_audit.plots`) and the report
sections, so that one model has one colour and one name everywhere in a report.

Colours are the Okabe–Ito palette (distinguishable under the common colour-vision
deficiencies); a flagged class is drawn in :data:`FLAG_COLOR`.
"""

from __future__ import annotations

__all__ = ["FLAG_COLOR", "MODEL_COLORS", "NEUTRAL", "model_color", "model_label", "multi_target"]

MODEL_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
FLAG_COLOR = "#C5221F"
NEUTRAL = "#5F6368"


def multi_target(result) -> bool:
    """Whether the audit measured its models under more than one target."""
    return len({m.target for m in result.models}) > 1


def model_label(result, m) -> str:
    """``name`` of model result ``m`` (or ``name · target`` when the audit has several targets)."""
    return f"{m.name} · {m.target}" if multi_target(result) else m.name


def model_color(result, m) -> str:
    """The colour of model result ``m``: by its place among ``result.models``."""
    i = next((k for k, x in enumerate(result.models) if x is m), 0)
    return MODEL_COLORS[i % len(MODEL_COLORS)]
