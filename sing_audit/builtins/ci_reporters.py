"""Reporters for CI: ``junit`` (``junit.xml``) and ``markdown`` (``summary.md``).

Both read the typed :class:`~sing_audit.results.AuditResult` alone, so ``sing-audit
report RUN_DIR --format junit,markdown`` re-renders them from ``results.json``.

- ``junit.xml``: one ``<testsuite>`` per model (``model@target``); in it one test case
  for the policy as a whole (a failure when the model fails the policy; an *error* when
  it was not assessed — never a pass —, *skipped* instead when the policy allows models
  that were not assessed) and one per
  flagged class (a failure with the reasons that flagged it, unless the model's flagged
  classes stay within ``policy.max_flagged``; a waived class is
  *skipped* with the waiver's reason and expiry). CI systems (GitHub, GitLab, Jenkins,
  Azure) show these as test results.
- ``summary.md``: a short Markdown summary for a pull-request comment or a CI step
  summary. When the environment variable ``GITHUB_STEP_SUMMARY`` names a file, the
  summary is also appended to it (GitHub Actions shows it on the run's page).

Class, model and target names are user-controlled text: the XML is built with
``xml.etree`` (escaped) after removing characters XML 1.0 cannot hold, and Markdown
special characters and HTML are escaped in the summary.
"""

from __future__ import annotations

import logging
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from sing_audit.components import Reporter
from sing_audit.hookspecs import hookimpl
from sing_audit.store import atomic_write_text

__all__ = [
    "JUnitReporter",
    "MarkdownReporter",
    "fmt_interval",
    "fmt_num",
    "fmt_ratio",
    "md_escape",
    "render_junit",
    "render_markdown",
    "xml_safe",
]

log = logging.getLogger("sing_audit")

# --------------------------------------------------------------------------- shared


def fmt_num(value, digits: int = 2, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def fmt_interval(ci, digits: int = 2, unit: str = "") -> str:
    if ci is None or ci.low is None or ci.high is None:
        return "n/a"
    return f"{ci.low:.{digits}f}–{ci.high:.{digits}f}{unit}"


def fmt_ratio(m) -> str:
    if m.is_as_ratio is None:
        return "undefined (no null space)" if m.null_dim == 0 else "undefined"
    ci = m.is_as_ratio_ci
    if ci.low is None or ci.high is None:
        return f"{m.is_as_ratio:.2f}"
    return f"{m.is_as_ratio:.2f} [{ci.low:.2f}, {ci.high:.2f}]"


def _random_warning(result) -> str | None:
    if not result.random_weights:
        return None
    parts = sorted({p for m in result.models for p in m.random_weights_parts}) or [
        f"{m.name}@{m.target}" for m in result.models if m.random_weights
    ]
    return (
        "RANDOM WEIGHTS: this audit ran with random-initialised weights ("
        + ", ".join(parts)
        + "); it checks the pipeline and is not a verdict on a trained model."
    )


# --------------------------------------------------------------------------- JUnit XML

# XML 1.0 Char: #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF].
# Everything else (C0 controls, lone surrogates, U+FFFE/U+FFFF) cannot appear in a
# well-formed document, not even as a character reference, so it is removed.
_XML_INVALID = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text) -> str:
    """``text`` as a string XML 1.0 can hold (invalid characters removed)."""
    return _XML_INVALID.sub("", "" if text is None else str(text))


def _el(parent, tag: str, text: str | None = None, **attrs) -> ET.Element:
    e = ET.SubElement(parent, tag, {k: xml_safe(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        e.text = xml_safe(text)
    return e


def _class_case_name(c) -> str:
    return f"class {c.index}: {c.name}"


def render_junit(result) -> str:
    """``junit.xml`` for an :class:`~sing_audit.results.AuditResult` (UTF-8 text)."""
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    root = ET.Element("testsuites", {"name": xml_safe(f"sing-audit: {result.name}")})
    seconds = sum(result.provenance.stage_seconds.values()) if result.provenance.stage_seconds else 0.0
    warning = _random_warning(result)
    for m in result.models:
        suite_name = f"{m.name}@{m.target}"
        suite = _el(root, "testsuite", name=suite_name, timestamp=result.provenance.started or None)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        props = _el(suite, "properties")
        for key, value in (
            ("backbone", m.backbone),
            ("target", m.target),
            ("rank_rule", m.rank_rule_label),
            ("null_dim", m.null_dim),
            ("is_mean", fmt_num(m.is_mean, 4)),
            ("as_abs_mean", fmt_num(m.as_abs_mean, 4)),
            ("is_as_ratio", "null" if m.is_as_ratio is None else f"{m.is_as_ratio:.4f}"),
            ("n_flagged", m.n_flagged),
            ("n_judged", m.n_judged),
            ("n_waived", m.n_waived),
            ("assessed", str(m.assessed).lower()),
            ("random_weights", str(m.random_weights).lower()),
        ):
            _el(props, "property", name=key, value=str(value))

        # the policy as a whole
        case = _el(suite, "testcase", classname=suite_name, name="policy", time="0")
        counts["tests"] += 1
        out_lines = [m.summary] if m.summary else []
        if m.random_weights:
            out_lines.insert(0, warning or "RANDOM WEIGHTS")
        if not m.assessed:
            message = "not assessed: " + "; ".join(m.not_assessed_reasons)
            if result.policy.get("allow_not_assessed"):
                counts["skipped"] += 1
                _el(case, "skipped", message=message + " (allowed by policy.allow_not_assessed)")
            else:
                counts["errors"] += 1
                _el(case, "error", "\n".join([*m.not_assessed_reasons, "", result.verdict]).strip(), message=message, type="NotAssessed")
        elif not m.passed:
            counts["failures"] += 1
            message = "; ".join(m.policy_failures) or "the model fails the policy"
            _el(case, "failure", "\n".join([*m.policy_failures, "", result.verdict]).strip(), message=message, type="PolicyFailure")
        if out_lines:
            _el(case, "system-out", "\n".join(out_lines))

        # one test case per flagged class
        for c in m.classes:
            if not c.flagged:
                continue
            case = _el(suite, "testcase", classname=suite_name, name=_class_case_name(c), time="0")
            counts["tests"] += 1
            figures = (
                f"mean |AS| {fmt_num(c.as_abs_mean, unit='°')} (95% CI {fmt_interval(c.as_abs_ci, unit='°')}), "
                f"mean AS {fmt_num(c.as_mean, unit='°')}, AS contrast {fmt_num(c.as_contrast, unit='°')}, "
                f"mean IS {fmt_num(c.is_mean, unit='°')}, {c.n} images"
            )
            if c.waived:
                counts["skipped"] += 1
                expiry = f" (expires {c.waiver_expires})" if c.waiver_expires else ""
                _el(case, "skipped", message=f"waived: {c.waiver_reason or 'no reason given'}{expiry}")
                _el(case, "system-out", "\n".join([f"flagged but waived by a reviewer{expiry}: {c.waiver_reason}", *c.flag_reasons, figures]))
            elif m.n_flagged <= int(result.policy.get("max_flagged", 0) or 0):
                # within the policy's allowance: visible, but not a failed check
                allowance = f"flagged, within the policy's max_flagged = {result.policy.get('max_flagged')}"
                _el(case, "system-out", "\n".join([allowance, *c.flag_reasons, figures]))
            else:
                counts["failures"] += 1
                message = "; ".join(c.flag_reasons) or "flagged"
                _el(case, "failure", "\n".join([*c.flag_reasons, figures]), message=message, type="FlaggedClass")
        for key, value in counts.items():
            suite.set(key, str(value))
            total[key] += value
    for key, value in total.items():
        root.set(key, str(value))
    root.set("time", f"{seconds:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


class JUnitReporter(Reporter):
    """``junit.xml``: one test suite per model, a test case for its policy and per flagged class."""

    formats = ("junit",)

    def write(self, result, output_dir: Path, fmt: str) -> list[Path]:
        path = Path(output_dir) / "junit.xml"
        atomic_write_text(path, render_junit(result))
        return [path]


# --------------------------------------------------------------------------- Markdown

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~$])")
_CONTROL = re.compile("[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\ud800-\udfff]")


def md_escape(text) -> str:
    """User-controlled text as literal Markdown: one line, no HTML, no Markdown syntax.

    ``&``, ``<`` and ``>`` become entities (no tag, no autolink); backslash, backticks,
    emphasis, link brackets, pipes (table cells), strike-through and math (``$``) are
    backslash-escaped; line breaks become spaces and control characters are removed.
    """
    text = "" if text is None else str(text)
    text = _CONTROL.sub("", text)
    text = re.sub(r"[\t\r\n\u2028\u2029]+", " ", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


_POLICY_CELL = {"passed": "pass", "failed": "FAIL", "not assessed": "NOT ASSESSED"}


def render_markdown(result) -> str:
    """``summary.md`` for an :class:`~sing_audit.results.AuditResult`."""
    verdict = {"passed": "PASS", "failed": "FAIL", "not assessed": "NOT ASSESSED"}[result.outcome]
    lines = [f"## sing-audit: {md_escape(result.name)} — {verdict}", ""]
    warning = _random_warning(result)
    if warning:
        lines += [f"> **{md_escape(warning)}**", ""]
    detail = re.sub(r"^(PASSED|FAILED|NOT ASSESSED):\s*", "", result.verdict)
    lines += [f"**{verdict}**" + (f" — {md_escape(detail)}" if detail else ""), ""]
    lines += [
        "| Model | Target | Null dim | Mean IS | Mean \\|AS\\| | IS/AS [95% CI] | Flagged | Policy |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for m in result.models:
        flagged = f"{m.n_flagged} of {m.n_judged} judged" + (f" (+{m.n_waived} waived)" if m.n_waived else "")
        name = md_escape(m.name) + (" (random weights)" if m.random_weights else "")
        null_dim = f"{m.null_dim} ({md_escape(m.rank_rule_label)})"
        lines.append(
            f"| {name} | {md_escape(m.target)} | {null_dim} | {fmt_num(m.is_mean, unit='°')} | "
            f"{fmt_num(m.as_abs_mean, unit='°')} | {fmt_ratio(m)} | {flagged} | {_POLICY_CELL[m.outcome]} |"
        )
    lines.append("")
    for m in result.models:
        if m.summary:
            lines.append(f"- **{md_escape(m.name)} @ {md_escape(m.target)}**: {md_escape(m.summary)}")
    flagged = [(m, c) for m in result.models for c in m.classes if c.flagged]
    if flagged:
        lines += [
            "",
            "### Flagged classes",
            "",
            "| Model | Index | Class | Mean \\|AS\\| | 95% CI | AS contrast | Images | Status |",
            "| --- | ---: | --- | ---: | --- | ---: | ---: | --- |",
        ]
        for m, c in sorted(flagged, key=lambda mc: -(mc[1].as_abs_mean or 0.0)):
            if c.waived:
                status = "waived: " + md_escape(c.waiver_reason or "no reason given")
                if c.waiver_expires:
                    status += f" (until {md_escape(c.waiver_expires)})"
            else:
                status = "flagged"
            lines.append(
                f"| {md_escape(m.name)} @ {md_escape(m.target)} | {c.index} | {md_escape(c.name)} | "
                f"{fmt_num(c.as_abs_mean, unit='°')} | {fmt_interval(c.as_abs_ci, unit='°')} | "
                f"{fmt_num(c.as_contrast, unit='°')} | {c.n} | {status} |"
            )
    threshold = result.policy.get("as_threshold")
    rule = (
        f"_A class is judged when it has at least {result.policy.get('min_images', 'n/a')} images, and flagged "
        f"when the lower 95% bound of its mean \\|AS\\| is also above "
        f"{'n/a' if threshold is None else f'{threshold:g}'}°. A model is not assessed when no class is judged, "
        "its null dimension is 0 or its translator misses the fidelity floor; that never counts as a pass._"
    )
    reports = [result.files[k] for k in ("html", "pdf") if k in result.files]
    if reports:
        rule += " Full report: " + ", ".join(md_escape(r) for r in reports) + " in the run folder."
    lines += ["", rule, ""]
    return "\n".join(lines)


class MarkdownReporter(Reporter):
    """``summary.md``: a short summary for a pull-request comment or CI step summary
    (also appended to ``$GITHUB_STEP_SUMMARY`` when set)."""

    formats = ("markdown",)

    def write(self, result, output_dir: Path, fmt: str) -> list[Path]:
        text = render_markdown(result)
        path = Path(output_dir) / "summary.md"
        atomic_write_text(path, text)
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY", "").strip()
        if step_summary:
            try:
                with open(step_summary, "a", encoding="utf-8") as fh:
                    fh.write(text if text.endswith("\n") else text + "\n")
            except OSError as exc:  # the CI's file, not our output: warn, never fail the audit
                log.warning("could not append the summary to GITHUB_STEP_SUMMARY=%s: %s", step_summary, exc)
        return [path]


@hookimpl
def register_reporters(register):
    register("junit", JUnitReporter)
    register("markdown", MarkdownReporter)
