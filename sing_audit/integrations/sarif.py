"""The ``sarif`` reporter: ``results.sarif``, the audit's findings as SARIF 2.1.0 for code
scanning (GitHub's code-scanning upload, GitLab, Azure DevOps, any SARIF viewer).

One result per finding, never one per image:

- ``flagged-class``: a flagged class of a model (a waived one carries a SARIF
  ``suppressions`` entry, status ``accepted``, with the waiver's reason as its justification);
- ``class-not-judged``: a class with fewer than ``policy.min_images`` images, which the
  policy could not judge;
- ``model-not-assessed``: a model nothing could be judged about, with its reasons;
- ``max-flagged``, ``min-is-as-ratio`` (``policy-failure`` for any other): each failed
  floor of the policy (a model's ``policy_failures``).

``level`` follows the policy: ``error`` for what makes the run fail (a flagged class of a
model that fails by it, a failed floor, a model not assessed unless
``policy.allow_not_assessed``), ``warning`` for a flagged class within ``max_flagged`` (or
of a model not assessed), a waived class and a model not assessed that the policy allows,
``note`` for a class not judged. Every result points at the report (``report.html`` when
the run writes it, else ``results.json``) relative to the run folder (``uriBaseId``
``RUNDIR``) and has ``partialFingerprints`` from its rule, model, target and class, so a
scanner tracks one finding across runs.

Names (models, targets, classes) are the user's text: the file is written with
``json.dumps`` (control characters escaped; a lone surrogate, which UTF-8 cannot hold,
becomes U+FFFD) and messages are plain text (``message.text``, never Markdown).
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import metadata
from pathlib import Path

from pydantic import Field

from sing_audit import __version__
from sing_audit.components import PluginOptions, Reporter
from sing_audit.hookspecs import hookimpl
from sing_audit.store import atomic_write_text

__all__ = ["RULES", "SarifReporter", "render_sarif"]

SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
FINGERPRINT_KEY = "singAuditFinding/v1"
RUN_DIR = "RUNDIR"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

#: rule id -> (short description, help)
RULES: dict[str, tuple[str, str]] = {
    "flagged-class": (
        "A class's meaning leaks into the null space of the classifier's head",
        "Moving this class's features within the head's null space changes no decision but shifts their meaning "
        "toward or away from the class prompt: the lower 95% bound of its mean |AS| is above policy.as_threshold. "
        "Such a model can be steered without changing its outputs. Look at the report's class table and top images; "
        "retrain or regularise the head, or record a reviewed waiver (policy.waivers) with a reason and an expiry.",
    ),
    "class-not-judged": (
        "A class has too few images for the policy to judge it",
        "The class has fewer than policy.min_images images in the audit, so it can be neither flagged nor cleared: "
        "the audit says nothing about it. Add images of this class, or lower policy.min_images knowingly.",
    ),
    "model-not-assessed": (
        "Nothing about a model could be judged",
        "No class had policy.min_images images, the head has no null space under the rank rule, or the translator "
        "missed policy.min_fidelity: the model neither passes nor fails. The message names the reasons.",
    ),
    "max-flagged": (
        "A model has more flagged classes than policy.max_flagged allows",
        "The model's flagged classes (after waivers) exceed policy.max_flagged; each one is a flagged-class result.",
    ),
    "min-is-as-ratio": (
        "A model's IS/AS ratio is below policy.min_is_as_ratio",
        "mean(IS) / mean(|AS|) is below the policy's floor: null removal changes the meaning of this model's features "
        "more per degree of image change than the policy accepts.",
    ),
    "policy-failure": (
        "A model fails the audit policy",
        "The model fails a floor of the audit policy; the message says which.",
    ),
}


def _num(value, unit: str = "°") -> str:
    return "n/a" if value is None else f"{value:.2f}{unit}"


def _interval(ci) -> str:
    if ci is None or ci.low is None or ci.high is None:
        return "n/a"
    return f"{ci.low:.2f}–{ci.high:.2f}°"


def _threshold(policy) -> str:
    value = policy.get("as_threshold")
    return "n/a" if value is None else f"{value:g}°"


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode("ascii")).hexdigest()


def _who(m) -> str:
    return f'model "{m.name}" (target "{m.target}")'


def _class_text(c) -> str:
    return f'class {c.index} "{c.name}"'


def _figures(c, images: bool = True) -> str:
    figures = f"mean |AS| {_num(c.as_abs_mean)} (95% CI {_interval(c.as_abs_ci)})"
    return f"{figures} over {c.n} images" if images else figures


def _properties(m, c=None) -> dict:
    props = {"model": m.name, "target": m.target, "randomWeights": bool(m.random_weights)}
    if c is not None:
        props.update({
            "classIndex": c.index, "className": c.name, "images": c.n,
            "asAbsMean": c.as_abs_mean, "asAbsCi": [c.as_abs_ci.low, c.as_abs_ci.high],
        })
    return props


def _floor_rule(failure: str) -> str:
    if "flagged class" in failure:
        return "max-flagged"
    if failure.startswith("IS/AS ratio"):
        return "min-is-as-ratio"
    return "policy-failure"


def _results_for(result, m) -> list[dict]:
    policy = result.policy
    max_flagged = int(policy.get("max_flagged", 0) or 0)
    min_images = policy.get("min_images", "n/a")
    allow_na = bool(policy.get("allow_not_assessed"))
    random = " Random-initialised weights: this checks the pipeline, not a trained model." if m.random_weights else ""
    out: list[dict] = []

    def add(rule: str, level: str, text: str, key: tuple, props: dict, **extra) -> None:
        out.append({
            "ruleId": rule,
            "ruleIndex": list(RULES).index(rule),
            "level": level,
            "message": {"text": text + random},
            "partialFingerprints": {FINGERPRINT_KEY: _fingerprint(rule, m.name, m.target, *key)},
            "properties": props,
            **extra,
        })

    if not m.assessed:
        reasons = "; ".join(m.not_assessed_reasons) or "no reason recorded"
        allowed = " (allowed by policy.allow_not_assessed)" if allow_na else ""
        add("model-not-assessed", "warning" if allow_na else "error",
            f"{_who(m)} was not assessed{allowed}: {reasons}.", (), _properties(m) | {"reasons": list(m.not_assessed_reasons)})
    for failure in m.policy_failures:
        rule = _floor_rule(failure)
        add(rule, "error", f"{_who(m)} fails the policy: {failure}.", (failure if rule == "policy-failure" else "",),
            _properties(m) | {"isAsRatio": m.is_as_ratio, "flagged": m.n_flagged, "judged": m.n_judged})
    fails_by_flags = m.assessed and m.n_flagged > max_flagged
    for c in m.classes:
        key = (c.index, c.name)
        if c.flagged:
            text = f"{_who(m)}, {_class_text(c)}: flagged, {_figures(c)}, above the {_threshold(policy)} threshold"
            extra = {}
            if c.waived:
                expiry = f" (until {c.waiver_expires})" if c.waiver_expires else ""
                justification = f"{c.waiver_reason or 'no reason given'}{expiry}"
                level, text = "warning", f"{text}; waived by a reviewer{expiry}: {c.waiver_reason}"
                extra["suppressions"] = [{"kind": "external", "status": "accepted", "justification": justification}]
            elif fails_by_flags:
                level = "error"
            else:
                level = "warning"
                text += (f"; within the policy's max_flagged = {max_flagged}" if m.assessed
                         else "; the model was not assessed")
            add("flagged-class", level, text + ".", key, _properties(m, c), **extra)
        elif isinstance(min_images, int) and c.n < min_images:
            add("class-not-judged", "note",
                f"{_who(m)}, {_class_text(c)}: not judged, {c.n} images (fewer than policy.min_images = {min_images}); "
                f"{_figures(c, images=False)}, mean IS {_num(c.is_mean)}.", key, _properties(m, c))
    return out


def _information_uri(option: str | None) -> str | None:
    if option:
        return option
    try:
        meta = metadata.metadata("sing-audit")
    except metadata.PackageNotFoundError:
        return None
    for entry in meta.get_all("Project-URL") or []:
        _, _, url = entry.partition(",")
        if url.strip().startswith(("https://", "http://")):
            return url.strip()
    home = meta.get("Home-page")
    return home if home and home.startswith(("https://", "http://")) else None


def _report_uri(result) -> str:
    formats = (result.provenance.config.get("report") or {}).get("formats") or []
    if "html" in result.files:
        return result.files["html"]
    return "report.html" if "html" in formats else result.files.get("json", "results.json")


def render_sarif(result, *, information_uri: str | None = None) -> str:
    """``results.sarif`` (SARIF 2.1.0, UTF-8 JSON text) for an :class:`~sing_audit.results.AuditResult`."""
    location = {"physicalLocation": {"artifactLocation": {"uri": _report_uri(result), "uriBaseId": RUN_DIR}}}
    results = []
    for m in result.models:
        for r in _results_for(result, m):
            results.append(r | {"locations": [location]})
    driver = {
        "name": "sing-audit",
        "version": __version__,
        "semanticVersion": __version__,
        "rules": [
            {
                "id": rule,
                "name": "".join(p.capitalize() for p in rule.split("-")),
                "shortDescription": {"text": short},
                "fullDescription": {"text": short + "."},
                "help": {"text": help_},
                "defaultConfiguration": {"level": "note" if rule == "class-not-judged" else "error"},
            }
            for rule, (short, help_) in RULES.items()
        ],
    }
    uri = _information_uri(information_uri)
    if uri:
        driver["informationUri"] = uri
    run = {
        "tool": {"driver": driver},
        "automationDetails": {"id": f"sing-audit/{result.name}/"},
        "originalUriBaseIds": {RUN_DIR: {"description": {"text": "the sing-audit run folder (where results.json is)"}}},
        "invocations": [{"executionSuccessful": True, "startTimeUtc": result.provenance.started or None,
                         "endTimeUtc": result.provenance.finished or None}],
        "results": results,
        "properties": {"audit": result.name, "outcome": result.outcome, "verdict": result.verdict,
                       "randomWeights": bool(result.random_weights)},
    }
    run["invocations"] = [{k: v for k, v in run["invocations"][0].items() if v is not None}]
    doc = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}
    # a lone surrogate (possible in a str, never in UTF-8) can only sit inside a JSON string
    return _LONE_SURROGATE.sub("\ufffd", json.dumps(doc, indent=2, ensure_ascii=False)) + "\n"


class SarifReporter(Reporter):
    """``results.sarif``: flagged classes, classes not judged, models not assessed and failed
    policy floors as SARIF 2.1.0 results, for code scanning."""

    formats = ("sarif",)

    class Options(PluginOptions):
        information_uri: str | None = Field(
            None, description="the tool's informationUri (default: the installed package's project URL, if any)"
        )

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or self.Options()

    def write(self, result, output_dir: Path, fmt: str) -> list[Path]:
        path = Path(output_dir) / "results.sarif"
        atomic_write_text(path, render_sarif(result, information_uri=self.options.information_uri))
        return [path]


@hookimpl
def register_reporters(register):
    register("sarif", SarifReporter)
