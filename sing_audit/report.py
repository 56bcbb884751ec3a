"""Rendering the report from the typed result alone (jinja2, autoescaped).

The report is a list of *sections*. A section is a :class:`ReportSection` subclass
registered through the ``register_reporters`` hook, like any reporter::

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
    def register_reporters(register):
        register("section:licence", LicenceSection)

The html and pdf reporters collect every registered factory that is a
:class:`ReportSection` subclass from a fresh registry, keep those whose
:meth:`~ReportSection.applies` is true, and render them in ``order`` (then ``key``),
each through its own template, into one document. The built-in sections
(:mod:`sing_audit.builtins.report_sections`) are registered the same way.

Rendering reads only the :class:`~sing_audit.results.AuditResult` and files it names
inside the run folder (per-image CSVs, thumbnails), always through
:func:`sing_audit.store.safe_child`: nothing outside the run folder is read and nothing
is fetched. Every picture is embedded as a ``data:`` URI, the page has no script, and
every value is autoescaped (class names and concept words are user-controlled).
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import inspect
import logging
import math
import re
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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
from .store import safe_child

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

#: largest picture file embedded into the report (bytes); bigger files are skipped
MAX_EMBEDDED_IMAGE_BYTES = 512 * 1024

_IMAGE_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


class ReportRenderError(SingAuditError):
    """The report cannot be rendered on this machine (e.g. a missing system library)."""


# --------------------------------------------------------------------------- sections


class ReportSection:
    """Base class of a report section (subclass it and register the class).

    Class attributes:

    - ``key``: a short identifier, unique among sections; the section's HTML id is
      ``section-<key>``.
    - ``title``: the section's heading.
    - ``order``: where the section goes (ascending). The built-ins use 10, 20, … 80:
      verdict 10, model comparison 20, per-class 30, concepts 40, steering 50, trust 60,
      image evidence 70, provenance 80.
    - ``template``: either a jinja2 template *string* (anything containing ``{``, ``<``
      or a line break) or a template *file name*, looked up in
      ``sing_audit/report_templates/`` and then in the folder of the module that
      defines the section class.
    - ``page_break``: start the section on a new page in print (default ``False``).

    The template is autoescaped and sees: ``result`` (the
    :class:`~sing_audit.results.AuditResult`), ``section`` (this object), ``medium``
    (``"screen"`` for report.html, ``"print"`` for report.pdf), ``policy`` (the
    result's policy dict) and everything :meth:`context` returns. Filters: ``num``
    (``value|num(digits, suffix)``, ``—`` for ``None``), ``deg`` (degrees), ``ci`` (an
    :class:`~sing_audit.results.Interval` as ``low–high``), ``pct``, ``sci`` (scientific
    notation), ``when`` (an ISO timestamp, readable), and for user-controlled names
    (class, model, target, concept, prompt, image id): ``name`` (cut to
    :data:`NAME_CHARS` with "…", the full name in a ``title`` tooltip on screen;
    ``name(keep_end=true)`` keeps the end, for ids), ``short_name`` (the same cut as plain
    text, for attributes such as ``alt``) and ``names_in`` (free text such as a model's
    summary, with every over-long name it quotes cut the same way). Print every name
    through one of them: a long name is not only unreadable, it makes the PDF's table
    layout slow (see :data:`NAME_CHARS`).

    The heading is drawn by the report; the template renders the section's body only.
    """

    key: ClassVar[str] = ""
    title: ClassVar[str] = ""
    order: ClassVar[int] = 500
    template: ClassVar[str] = ""
    #: start the section on a new page in the pdf
    page_break: ClassVar[bool] = False

    def applies(self, result) -> bool:
        """Whether the section has anything to show for ``result`` (default: yes)."""
        return True

    def context(self, result, run_dir: Path) -> dict[str, Any]:
        """Extra template variables. ``run_dir`` is the run folder: read files the
        result names only through :func:`sing_audit.store.safe_child` (or the helpers
        :func:`read_images_csv` and :func:`embed_image`)."""
        return {}


@dataclass
class RenderedSection:
    """One section as it goes into the document."""

    key: str
    title: str
    order: int
    html: Markup
    error: str | None = None
    page_break: bool = False


def collect_sections(registry=None) -> list[ReportSection]:
    """Every registered :class:`ReportSection` subclass, instantiated, in order.

    ``registry`` defaults to a fresh :func:`sing_audit.host.create_registry`.
    """
    if registry is None:
        from .host import create_registry

        registry = create_registry()
    found: list[ReportSection] = []
    seen: dict[str, str] = {}
    for reg in registry.all():
        factory = reg.factory
        if reg.kind != "reporter" or not (isinstance(factory, type) and issubclass(factory, ReportSection)):
            continue
        section = factory()
        key = str(section.key or reg.name)
        if key in seen:
            log.warning("report sections %s and %s share the key %r; keeping the first", seen[key], reg.name, key)
            continue
        seen[key] = reg.name
        found.append(section)
    found.sort(key=lambda s: (int(s.order), str(s.key)))
    return found


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


def long_names(result, width: int = NAME_CHARS) -> list[str]:
    """The user-controlled names of ``result`` longer than ``width`` characters (those the
    report cuts), shortest first: what ``names_in`` looks for in free text."""
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
        concepts = m.probes.get("concepts")
        per = concepts.get("per_class") if isinstance(concepts, dict) else None
        if isinstance(per, dict):
            add(*per)
            add(*(x.get("concept") for items in per.values() if isinstance(items, list) for x in items if isinstance(x, dict)))
        steering = m.probes.get("steering")
        targets = steering.get("targets") if isinstance(steering, dict) else None
        if isinstance(targets, list):
            add(*(t.get(k) for t in targets if isinstance(t, dict) for k in ("prompt", "source")))
    for a in getattr(result, "target_agreement", None) or []:
        add(*a.targets, *a.models)
    for c in getattr(result, "model_comparisons", None) or []:
        add(c.target, c.model_a, c.model_b)
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


# --------------------------------------------------------------------------- files in the run folder


def embed_image(run_dir: Path | None, relative: str | None) -> str | None:
    """A ``data:`` URI of a JPEG/PNG/GIF the result names inside the run folder.

    ``None`` when there is no run folder, the path leaves the run folder, the file is
    missing, too large, or not a picture of a known type.
    """
    if run_dir is None or not relative:
        return None
    try:
        path = safe_child(Path(run_dir), str(relative))
    except (ValueError, OSError):
        log.warning("report: picture %r is outside the run folder; not embedded", relative)
        return None
    try:
        if not path.is_file() or path.stat().st_size > MAX_EMBEDDED_IMAGE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    for magic, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return None


@dataclass
class ImagesTable:
    """The per-image values of one model (its ``images.csv``), grouped by head index."""

    path: str
    as_by_label: dict[int, np.ndarray] = field(default_factory=dict)
    is_by_label: dict[int, np.ndarray] = field(default_factory=dict)
    n_rows: int = 0


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_images_csv(run_dir: Path | None, relative: str | None) -> ImagesTable | None:
    """Read a model's per-image CSV (columns ``label``, ``as``, ``is``) from the run folder.

    ``None`` when it is absent, outside the run folder or unreadable.
    """
    if run_dir is None or not relative:
        return None
    try:
        path = safe_child(Path(run_dir), str(relative))
    except (ValueError, OSError):
        log.warning("report: per-image file %r is outside the run folder; not read", relative)
        return None
    if not path.is_file():
        return None
    labels: list[int] = []
    as_vals: list[float] = []
    is_vals: list[float] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or "label" not in header or "as" not in header:
                return None
            i_label, i_as = header.index("label"), header.index("as")
            i_is = header.index("is") if "is" in header else None
            for row in reader:
                if len(row) <= max(i_label, i_as):
                    continue
                try:
                    labels.append(int(row[i_label]))
                except ValueError:
                    continue
                as_vals.append(_float(row[i_as]))
                is_vals.append(_float(row[i_is]) if i_is is not None and i_is < len(row) else math.nan)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("report: cannot read %s: %s", relative, exc)
        return None
    table = ImagesTable(path=str(relative), n_rows=len(labels))
    if not labels:
        return table
    lab = np.asarray(labels)
    a = np.asarray(as_vals, dtype=np.float64)
    s = np.asarray(is_vals, dtype=np.float64)
    order = np.argsort(lab, kind="stable")
    lab, a, s = lab[order], a[order], s[order]
    uniq, starts = np.unique(lab, return_index=True)
    ends = list(starts[1:]) + [lab.size]
    for k, b, e in zip(uniq, starts, ends):
        table.as_by_label[int(k)] = a[b:e]
        table.is_by_label[int(k)] = s[b:e]
    return table


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
    env.globals["long_names"] = long_names(result)  # found once, for every names_in of the document
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
