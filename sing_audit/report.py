"""Rendering the report from the typed result alone (jinja2, autoescaped)."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

__all__ = ["create_environment", "render_html"]


def _fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def create_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("sing_audit", "report_templates"),
        autoescape=select_autoescape(["html", "htm", "xml", "j2"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _fmt
    return env


def render_html(result) -> str:
    """The report page for an :class:`~sing_audit.results.AuditResult`."""
    env = create_environment()
    return env.get_template("report.html.j2").render(result=result)
