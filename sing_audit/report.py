"""Rendering the report from the typed result alone (jinja2, autoescaped).

The report is a list of *sections*. A section is a :class:`ReportSection` subclass
(:mod:`sing_audit.report_sections`) registered through the ``register_report_sections``
hook::

    from sing_audit import hookimpl
    from sing_audit.report import ReportSection

    class LicenceSection(ReportSection):
        \"\"\"Who may use the audited models.\"\"\"

        key = "licence"
        title = "Licences"
        order = 85                       # after provenance (80)
        template = "<p>{{ note }}</p>"   # a template string, or a file name

        def applies(self, result):
            return True

        def context(self, result, run_dir):
            return {"note": "internal use only"}

    @hookimpl
    def register_report_sections(register):
        register("licence", LicenceSection)

The html and pdf reporters collect every registered section from a fresh registry
(:func:`collect_sections`), keep those whose
:meth:`~ReportSection.applies` is true, and render them in ``order`` (then ``key``),
each through its own template, into one document. The built-in sections
(:mod:`sing_audit.builtins.report_sections`, and each probe's beside it) are registered
the same way.

Rendering reads only the :class:`~sing_audit.results.AuditResult` and files it names
inside the run folder (per-image CSVs, thumbnails), always through
:func:`sing_audit.store.safe_child`: nothing outside the run folder is read and nothing
is fetched. Every picture is embedded as a ``data:`` URI, the page has no script, and
every value is autoescaped (class names and concept words are user-controlled).
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import math
import re
from bisect import bisect_right
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    PrefixLoader,
    StrictUndefined,
    Template,
    pass_context,
)
from markupsafe import Markup, escape

from .errors import SingAuditError
from .report_files import MAX_EMBEDDED_IMAGE_BYTES, ImagesTable, embed_image, read_images_csv
from .report_sections import RenderedSection, ReportSection, collect_sections

__all__ = [
    "NAME_CHARS",
    "ImagesTable",
    "RenderedSection",
    "ReportRenderError",
    "ReportSection",
    "collect_sections",
    "create_environment",
    "embed_image",
    "long_names",
    "read_images_csv",
    "render_html",
    "render_report",
    "short_name",
]

log = logging.getLogger(__name__)

#: media the templates are rendered for: ``screen`` (report.html) or ``print`` (report.pdf)
MEDIA = ("screen", "print")

class ReportRenderError(SingAuditError):
    """The report cannot be rendered on this machine (e.g. a missing system library)."""


# --------------------------------------------------------------------------- sections


# --------------------------------------------------------------------------- jinja


def _fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            return "—"
        text = f"{float(value):.{digits}f}"
        if text.startswith("-"):
            text = "−" + text[1:] if float(text) != 0 else text[1:]  # typographic minus; no "−0.00"
        return f"{text}{suffix}"
    return f"{value}{suffix}"


def _deg(value, digits: int = 2) -> str:
    return _fmt(value, digits, "°")


def _ci(interval, digits: int = 2, suffix: str = "") -> str:
    low = getattr(interval, "low", None) if not isinstance(interval, dict) else interval.get("low")
    high = getattr(interval, "high", None) if not isinstance(interval, dict) else interval.get("high")
    if low is None or high is None:
        return "—"
    return f"[{_fmt(low, digits)}, {_fmt(high, digits)}]{suffix}"


def _pct(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{100.0 * float(value):.{digits}f}%"


def _sci(value, digits: int = 1) -> str:
    if value is None:
        return "—"
    v = float(value)
    if v == 0.0:
        return "0"
    if 1e-3 <= abs(v) < 1e4:
        return f"{v:.{digits + 2}g}"
    return f"{v:.{digits}e}"


def _when(value) -> str:
    if not value:
        return ""
    try:
        t = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if t.tzinfo is not None and t.utcoffset() == dt.timedelta(0):
        return t.strftime("%Y-%m-%d %H:%M UTC")
    return t.strftime("%Y-%m-%d %H:%M %z").strip()


#: Characters of a user-controlled name (class, model, backbone, target, concept word,
#: steering prompt, image id) the report prints; a longer name is cut to this many, ending
#: in "…" (:func:`short_name`). The full name stays in results.json and, in report.html, in
#: the ``title`` tooltip of the cut text. 80 keeps whole every timm and open_clip model name,
#: the readable ImageNet names sing-audit derives from a timm head (30 characters at most:
#: "American Staffordshire terrier") and 990 of the 1000 full WordNet descriptions
#: ("tabby, tabby cat"; the longest is 121).
#:
#: The bound is also what keeps the PDF's time in check: to size an automatic table column,
#: weasyprint measures a cell's narrowest layout by breaking its text at every opportunity,
#: laying out the rest of the text again each time, and under ``overflow-wrap: anywhere``
#: (the class column) every character is one. A cell therefore costs time quadratic in its
#: length: one 5000-character class name took the demo's PDF from 3 s to 4 minutes. A cut
#: name is at most 80 characters, and breaks only where :func:`_breakable` lets it.
NAME_CHARS = 80

_ELLIPSIS = "…"


def short_name(value, width: int = NAME_CHARS, *, keep_end: bool = False) -> str:
    """``value`` as text on one line (runs of white space as one space), cut to ``width``
    characters with "…" when it is longer: at the end, or in the middle with ``keep_end``
    (for ids and paths, whose end tells them apart). The plain-text form of the ``name``
    filter; the charts (:mod:`sing_audit.plots`) cut their labels with it too."""
    text = "" if value is None else " ".join(str(value).split())
    if len(text) <= width:
        return text
    keep = max(int(width) - 1, 0)
    if keep_end and keep >= 2:
        head = keep // 2
        return text[:head].rstrip() + _ELLIPSIS + text[len(text) - (keep - head):].lstrip()
    return text[:keep].rstrip() + _ELLIPSIS


def _is_cut(text: str, width: int) -> bool:
    return len(text) > width and len(" ".join(text.split())) > width


#: characters between the break opportunities (``<wbr>``) put into a cut name's runs without spaces
_CHUNK = 10
_RUN = re.compile(r"\S{%d,}" % (_CHUNK + 1))


def _breakable(text: str) -> Markup:
    """``text`` escaped, with a ``<wbr>`` every :data:`_CHUNK` characters of a run without
    spaces. A cut name is laid out with ``overflow-wrap: break-word`` and these break
    opportunities, never ``anywhere``: a few opportunities per name instead of one per
    character, so sizing its table column costs what an ordinary name does."""
    out, pos = [], 0
    for match in _RUN.finditer(text):
        run = match.group()
        out.append(escape(text[pos:match.start()]))
        out.append(Markup("<wbr>").join(escape(run[i:i + _CHUNK]) for i in range(0, len(run), _CHUNK)))
        pos = match.end()
    out.append(escape(text[pos:]))
    return Markup("").join(out)


@pass_context
def _name(ctx, value, width: int = NAME_CHARS, keep_end: bool = False) -> Markup:
    """A name, autoescaped; when cut, the cut text in ``<span class="cut">`` whose
    ``title`` holds the full name (screen only: nothing in print shows a tooltip)."""
    text = "" if value is None else str(value)
    if not _is_cut(text, width):
        return escape(text)
    shown = _breakable(short_name(text, width, keep_end=keep_end))
    if ctx.get("medium") == "print":
        return Markup('<span class="cut">{}</span>').format(shown)
    return Markup('<span class="cut" title="{}">{}</span>').format(text, shown)


def long_names(result, width: int = NAME_CHARS, sections: Iterable[ReportSection] = ()) -> list[str]:
    """The user-controlled names of ``result`` longer than ``width`` characters (those the
    report cuts), shortest first: what ``names_in`` looks for in free text. Besides the
    result's own names, each of ``sections`` adds those it prints
    (:meth:`ReportSection.names`, e.g. a probe's concept words or prompts)."""
    found: set[str] = set()

    def add(*values) -> None:
        for v in values:
            if isinstance(v, str) and _is_cut(v, width):
                found.add(v)

    add(getattr(result, "name", None))
    for m in getattr(result, "models", None) or []:
        add(m.name, m.backbone, m.target, *m.flagged_classes)
        add(*(c.name for c in m.classes))
        add(*(x for ev in m.top_images for x in (ev.image_id, ev.class_name)))
    for a in getattr(result, "target_agreement", None) or []:
        add(*a.targets, *a.models)
    for c in getattr(result, "model_comparisons", None) or []:
        add(c.target, c.model_a, c.model_b)
    for section in sections:
        add(*section.names(result))
    return sorted(found, key=len)


@pass_context
def _names_in(ctx, value) -> Markup:
    """Free text (a summary, a warning), autoescaped, with every over-long name of the
    result it quotes rendered by the ``name`` filter."""
    text = "" if value is None else str(value)
    names = ctx.get("long_names")
    if names is None:
        result = ctx.get("result")
        names = long_names(result) if result is not None else []
    lengths = [len(n) for n in names]
    quoted = [n for n in names[: bisect_right(lengths, len(text))] if n in text]
    if not quoted:
        return escape(text)
    pattern = re.compile("|".join(re.escape(n) for n in sorted(quoted, key=len, reverse=True)))
    out, pos = [], 0
    for match in pattern.finditer(text):
        out.extend((escape(text[pos:match.start()]), _name(ctx, match.group())))
        pos = match.end()
    out.append(escape(text[pos:]))
    return Markup("").join(out)


def create_environment(extra_dirs: Iterable[Path] = (), user_dir: Path | None = None) -> Environment:
    """The jinja2 environment of the report: autoescaped, strict, with the report filters.

    Templates are looked up in ``user_dir`` first (``report.templates``: a user's own
    templates override any built-in one of the same name), then in the built-in
    ``report_templates``, then in ``extra_dirs`` (the folders of the modules that define
    sections). A built-in template stays reachable as ``default:<name>``, so a user's
    template can extend the one it replaces (``{% extends "default:report.html.j2" %}``),
    as in datasette."""
    builtin = PackageLoader("sing_audit.report_templates", ".")
    loaders: list[BaseLoader] = []
    if user_dir is not None:
        loaders.append(FileSystemLoader(str(user_dir)))
    loaders += [PrefixLoader({"default": builtin}, delimiter=":"), builtin]
    dirs = [str(d) for d in extra_dirs]
    if dirs:
        loaders.append(FileSystemLoader(dirs))
    env = Environment(
        loader=ChoiceLoader(loaders),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_fmt, deg=_deg, ci=_ci, pct=_pct, sci=_sci, when=_when,
                       name=_name, short_name=short_name, names_in=_names_in)
    # long_names: the result's over-long names, set by render_report (None: names_in finds them itself)
    env.globals.update(zip=zip, name_chars=NAME_CHARS, long_names=None)
    return env


def _is_template_string(template: str) -> bool:
    return any(ch in template for ch in "{<\n")


def _section_template(env: Environment, section: ReportSection) -> Template:
    template = section.template
    if not isinstance(template, str) or not template:
        raise ValueError(f"report section {type(section).__name__} has no template")
    if _is_template_string(template):
        return env.from_string(template)
    return env.get_template(template)


def _module_dir(section: ReportSection) -> Path | None:
    try:
        return Path(inspect.getfile(type(section))).resolve().parent
    except (TypeError, OSError):
        return None


# --------------------------------------------------------------------------- rendering


def _render_section(env: Environment, section: ReportSection, result, run_dir: Path | None, medium: str) -> RenderedSection | None:
    name = type(section).__name__
    key = str(section.key or name)
    title = str(section.title or key)
    try:
        if not section.applies(result):
            return None
        ctx = dict(section.context(result, Path(run_dir) if run_dir is not None else None) or {})
        ctx.update(result=result, section=section, medium=medium, policy=result.policy or {})
        html = _section_template(env, section).render(**ctx)
    except Exception as exc:
        log.warning("report section %r (%s) failed", key, name, exc_info=True)
        return RenderedSection(key, title, int(section.order), Markup(""), f"{exc.__class__.__name__}: {exc}")
    return RenderedSection(key, title, int(section.order), Markup(html), page_break=bool(section.page_break))


def render_report(
    result,
    run_dir: Path | None = None,
    *,
    medium: str = "screen",
    registry=None,
    sections: list[ReportSection] | None = None,
) -> str:
    """The whole report as one self-contained HTML document.

    ``medium`` is ``"screen"`` (report.html) or ``"print"`` (the document weasyprint
    turns into report.pdf: long tables are shortened). ``sections`` defaults to
    :func:`collect_sections` of ``registry`` (a fresh registry by default).
    """
    if medium not in MEDIA:
        raise ValueError(f"medium must be one of {MEDIA}, got {medium!r}")
    if sections is None:
        sections = collect_sections(registry)
    dirs: list[Path] = []
    for s in sections:
        d = _module_dir(s)
        if d is not None and d not in dirs:
            dirs.append(d)
    env = create_environment(dirs, user_templates(result))
    env.globals["long_names"] = long_names(result, sections=sections)  # found once, for every names_in of the document
    rendered = [r for r in (_render_section(env, s, result, run_dir, medium) for s in sections) if r is not None]
    return env.get_template("report.html.j2").render(result=result, sections=rendered, medium=medium)


def user_templates(result) -> Path | None:
    """The user's template folder the audit was configured with (``report.templates``),
    an absolute path recorded in the result's provenance; ``None`` when there is none."""
    folder = ((result.provenance.config or {}).get("report") or {}).get("templates")
    if not folder:
        return None
    path = Path(folder)
    if not path.is_dir():
        raise ReportRenderError(
            f"report.templates folder {path} (recorded in results.json) does not exist; restore it, or re-render "
            "without it by removing report.templates from the config and running the audit again"
        )
    return path


def render_html(result, run_dir: Path | None = None, **kwargs) -> str:
    """The report page (screen medium) for an :class:`~sing_audit.results.AuditResult`."""
    return render_report(result, run_dir, medium="screen", **kwargs)
