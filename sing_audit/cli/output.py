"""What the commands print: lines, JSON and tables, every user-controlled text made
inert through :mod:`sing_audit.terminal` first."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager

from ..terminal import plain

__all__ = ["say", "warn", "say_json", "print_error", "one_line", "table", "terminal_logging"]


def say(text="") -> None:
    """Print a line (user-controlled text made inert: see :mod:`sing_audit.terminal`)."""
    print(plain(text))


def warn(text) -> None:
    print(plain(text), file=sys.stderr)


def say_json(data) -> None:
    """Print ``data`` as JSON; characters a terminal would act on are \\u-escaped
    (valid JSON: they can only occur inside strings)."""
    text = json.dumps(data, indent=2, default=str, ensure_ascii=False)
    print("".join(c if c.isprintable() or c in "\n " else json.dumps(c)[1:-1] for c in text))


def print_error(kind: str, exc: BaseException) -> None:
    warn(f"sing-audit: {kind}: {exc}")


def one_line(text) -> str:
    """User-controlled text on one terminal line (control characters shown escaped)."""
    return plain(text, keep_newlines=False)


def table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    """The lines of a table with left-aligned columns."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


class _WarningLines(logging.Handler):
    """sing-audit's own warnings on stderr as plain lines (the message alone, as Python
    prints a warning nobody handles), never ``WARNING:sing_audit:…``, and never a
    traceback: that is in the run log."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            warn(record.getMessage())
        except Exception:  # noqa: BLE001 - logging never breaks the command
            self.handleError(record)


def _prints_to_terminal(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return not isinstance(handler, logging.FileHandler) and stream is not None and stream in (
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


@contextmanager
def terminal_logging():
    """While a command runs, the terminal shows only what the command prints: sing-audit's
    warnings as plain lines, and no log record of a library, whatever the library did to
    the root logger (``logging.basicConfig`` at import, or an implicit one through
    ``logging.warning``). The run log (:func:`sing_audit.pipeline.stages.file_log`) keeps
    every record. Handlers and propagation are put back afterwards."""
    ours, root = logging.getLogger("sing_audit"), logging.getLogger()
    printing = [h for h in root.handlers if _prints_to_terminal(h)]
    guard = logging.NullHandler()  # root has a handler: no implicit basicConfig adds one
    lines = _WarningLines(logging.WARNING)
    # errors end the command, and main() prints each once (with its exit code's meaning)
    lines.addFilter(lambda record: record.levelno < logging.ERROR)
    propagate = ours.propagate
    for h in printing:
        root.removeHandler(h)
    root.addHandler(guard)
    ours.addHandler(lines)
    ours.propagate = False
    try:
        yield
    finally:
        ours.propagate = propagate
        ours.removeHandler(lines)
        root.removeHandler(guard)
        for h in printing:
            root.addHandler(h)
