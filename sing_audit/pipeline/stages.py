"""A run's stages: their clock, the run log, and which stage an exception escaped from.

:meth:`StageClock.stage` times a stage and notes on an exception that passes through it
which stage it escaped (the run is gone by the time the CLI sees the exception), so that
on Ctrl-C the terminal can say which stage was interrupted. Stages nest (the text stage runs inside the probes stage when a probe embeds
new prompts): the innermost one is named, the enclosing ones are kept in ``outer``.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import SingAuditError

__all__ = ["StageClock", "StageExit", "file_log", "record_stage_exit", "stage_exit"]

log = logging.getLogger("sing_audit")

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


class StageClock:
    """The time each finished stage of a run took (``seconds``, for the provenance)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        """Time a stage and log how it ended: "stage X: 1.23s" when it finished, "stage X:
        interrupted after 1.23s" on Ctrl-C, "stage X: failed after 1.23s (ErrorClass)" on an
        exception. Only finished stages count in ``seconds``: an unfinished stage's time is
        in the log, never reported as work done. The exception carries the stage it
        escaped from (:func:`stage_exit`), so the CLI can name it."""
        start = time.perf_counter()
        log.info("stage %s: start", name)
        try:
            yield
        except BaseException as exc:
            elapsed = time.perf_counter() - start
            if isinstance(exc, KeyboardInterrupt):
                log.warning("stage %s: interrupted after %.2fs", name, elapsed)
            else:
                log.warning("stage %s: failed after %.2fs (%s)", name, elapsed, type(exc).__name__)
            record_stage_exit(exc, name, elapsed)
            raise
        elapsed = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        log.info("stage %s: %.2fs", name, elapsed)


@contextmanager
def file_log(out: Path, name: str = "run.log"):
    """Log the run into ``out/logs/name``, and with it what any library logs meanwhile
    (named by its logger: ``WARNING root: …``). An exception that ends the run is logged there
    too — with its traceback when it is a bug — and carries the log's path
    (``exc.sing_audit_log``) so the error message can point to it."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / name
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    # what libraries log (at the root logger or their own) goes into the same file, named
    others = logging.StreamHandler(handler.stream)
    others.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    others.addFilter(lambda r: r.name != log.name and not r.name.startswith(log.name + "."))  # ours are in already
    root = logging.getLogger()
    root.addHandler(others)
    previous = log.level
    log.setLevel(logging.INFO)
    try:
        yield path
    except KeyboardInterrupt:
        log.warning("interrupted")
        raise
    except SingAuditError as exc:
        log.error("run stopped: %s", exc)
        exc.sing_audit_log = path
        raise
    except Exception as exc:
        log.exception("internal error (a bug, not a verdict): %s: %s", exc.__class__.__name__, exc)
        exc.sing_audit_log = path
        raise
    finally:
        root.removeHandler(others)
        log.removeHandler(handler)
        handler.close()
        log.setLevel(previous)
