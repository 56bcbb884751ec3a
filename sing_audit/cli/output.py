"""What the commands print: lines, JSON and tables, every user-controlled text made
inert through :mod:`sing_audit.terminal` first."""

from __future__ import annotations

import json
import sys

from ..terminal import plain

__all__ = ["say", "warn", "say_json", "print_error", "one_line", "table"]


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
