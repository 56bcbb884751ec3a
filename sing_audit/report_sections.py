"""Report sections: the base class every section subclasses, and how the report finds them.

A section is registered through the ``register_report_sections`` hook (a probe ships its
section beside it: :mod:`sing_audit.builtins.steering_section`). The shared helpers of
sections live here (:func:`sorted_classes`) and in :mod:`sing_audit.palette` (model
colours and labels); a section reads a probe's summary only through its typed model
(:func:`sing_audit.probes.probe_summary`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from markupsafe import Markup

from .errors import PluginError

__all__ = ["RenderedSection", "ReportSection", "collect_sections", "sorted_classes"]

log = logging.getLogger(__name__)


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
      ``report_templates/`` (a user's ``report.templates`` folder first) and then in the folder of the module that
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

    def names(self, result) -> list[str]:
        """User-controlled names besides the result's own (classes, models, targets, image
        ids) that the section prints, e.g. the concept words or prompts of a probe's
        summary: the report cuts them where they are long, in free text too."""
        return []


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
    """Every section registered through ``register_report_sections``, instantiated, in order.

    ``registry`` defaults to a fresh :func:`sing_audit.host.create_registry`.
    """
    if registry is None:
        from .host import create_registry

        registry = create_registry()
    found: list[ReportSection] = []
    seen: dict[str, str] = {}
    for name in registry.names("report_section"):
        reg = registry.get("report_section", name)
        factory = reg.factory
        if not (isinstance(factory, type) and issubclass(factory, ReportSection)):
            raise PluginError(f"report section {name!r} of {reg.plugin} is not a ReportSection subclass")
        section = factory()
        key = str(section.key or reg.name)
        if key in seen:
            log.warning("report sections %s and %s share the key %r; keeping the first", seen[key], reg.name, key)
            continue
        seen[key] = reg.name
        found.append(section)
    found.sort(key=lambda s: (int(s.order), str(s.key)))
    return found


def _abs_key(c) -> float:
    return -(c.as_abs_mean if c.as_abs_mean is not None else -math.inf)


def sorted_classes(m) -> list:
    """Classes of a model result by mean |AS|, largest first (undefined last)."""
    return sorted(m.classes, key=lambda c: (c.as_abs_mean is None, _abs_key(c), c.index))
