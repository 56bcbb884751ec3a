"""Text for the terminal: user-controlled strings made inert, long names shortened.

Class names, image ids, concept words, file paths and plugin docstrings come from users
and third parties. Printed raw, a name holding ``ESC ] 0 ; … BEL`` retitles the terminal
and ``ESC [ 2 J`` clears it; bidirectional overrides reorder what the reader sees. Every
line the CLI prints goes through :func:`plain`, which shows such characters escaped
(``\\x1b``, ``\\u202e``) instead of sending them.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterable

__all__ = ["plain", "shorten", "close_matches", "suggest", "first_sentence", "TERMINAL_NAME_CHARS"]

#: longest name printed whole on a terminal line; longer ones are shortened with an ellipsis
TERMINAL_NAME_CHARS = 80


def plain(text, *, keep_newlines: bool = True) -> str:
    """``text`` safe to print: every non-printable character (C0/C1 controls, escape,
    bidi overrides, other format characters) shown escaped; line breaks kept when
    ``keep_newlines`` (multi-line messages stay readable)."""
    out = []
    for c in str(text):
        if c.isprintable() or (keep_newlines and c == "\n"):
            out.append(c)
        else:
            out.append(repr(c)[1:-1] if c not in "\t" else "\\t")
    return "".join(out)


def shorten(text, limit: int = TERMINAL_NAME_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, with ``…`` where it was cut."""
    text = str(text)
    return text if len(text) <= limit else text[: max(1, limit - 1)] + "…"


def close_matches(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.5) -> list[str]:
    """The choices closest to a misspelled ``name``, best first (the one "did you mean"
    helper every message uses)."""
    return difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=cutoff)


def suggest(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.5) -> str:
    """``' (did you mean "x"?)'`` for the close matches of ``name``, or the valid choices
    when there are few (never a whole catalogue)."""
    choices = list(choices)
    close = close_matches(name, choices, n=n, cutoff=cutoff)
    if close:
        return " (did you mean " + " or ".join(f'"{c}"' for c in close) + "?)"
    return "; valid choices: " + ", ".join(sorted(choices)) if len(choices) <= 12 else ""


_ROLE = re.compile(r":[\w:.-]+:`(~?)([^`<]*?)\s*(?:<[^`>]*>)?`")  # :class:`~a.B` , :ref:`text <target>`
_LITERAL = re.compile(r"``(.+?)``|`([^`]+)`_{0,2}")
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)[.!?](?=\s|$)")


def first_sentence(doc) -> str:
    """The first sentence of a docstring's first paragraph as plain text: its lines
    joined, reST markup dropped (``:class:`~a.B``` reads ``B``, a full path stays full,
    ````x```` and ```x``` read ``x``); the whole paragraph when no sentence ends in it."""
    paragraph = re.split(r"\n\s*\n", inspect.cleandoc(str(doc or "")).strip(), maxsplit=1)[0]
    text = " ".join(paragraph.split())
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2), text)
    text = _LITERAL.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), text)
    end = _SENTENCE_END.search(text)
    return text[: end.end()] if end else text
