"""Which stage of a run an exception escaped from.

``Runner.stage`` notes it on the exception itself as it passes (the runner is gone by the
time the CLI sees the exception), so that on Ctrl-C the terminal can say which stage was
interrupted. Stages nest (the text stage runs inside the probes stage when a probe embeds
new prompts): the innermost one is named, the enclosing ones are kept in ``outer``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["StageExit", "record_stage_exit", "stage_exit"]

_ATTR = "sing_audit_stage_exit"


@dataclass(frozen=True)
class StageExit:
    """``name``: the innermost stage the exception escaped; ``seconds``: how long that
    stage had run; ``outer``: the stages around it, innermost first."""

    name: str
    seconds: float
    outer: tuple[str, ...] = ()


def record_stage_exit(exc: BaseException, name: str, seconds: float) -> None:
    """Note on ``exc`` that it escaped stage ``name`` after ``seconds`` (an enclosing
    stage, seen later, is added to ``outer``)."""
    current = stage_exit(exc)
    value = StageExit(name, float(seconds)) if current is None else replace(current, outer=(*current.outer, name))
    try:
        setattr(exc, _ATTR, value)
    except (AttributeError, TypeError):  # an exception type that takes no attributes
        pass


def stage_exit(exc: BaseException) -> StageExit | None:
    """The stage ``exc`` escaped from, or ``None`` (raised outside every stage)."""
    value = getattr(exc, _ATTR, None)
    return value if isinstance(value, StageExit) else None
