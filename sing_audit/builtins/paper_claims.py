"""``sing-audit check-claims RUN``: a finished run of ``examples/paper/`` against the paper's claims.

"Make it SING" (CVPR 2026) publishes three numbers this command checks (docs/reproduce.md):

- ``ratio_order``: among its five ImageNet backbones, DINO ViT has the highest IS/AS ratio
  and ResNeXt-101 the lowest;
- ``steering``: steering within the null space moves ResNet-50's features by |AS|
  12.04 ± 0.25° and DINO ViT's by 5.0 ± 0.59°;
- ``logit_correlation``: the translator keeps the target's logits, Pearson r 0.972
  (``fidelity.logit_correlation``, defined in docs/design.md).

Each claim is *held*, *not held* or *not measurable* (a model missing, random weights, a
model not assessed, a probe that did not run), with the measured value, the paper's and
the tolerance. Exit codes: 0 every claim held; 1 a claim not held, or a claim not
measurable (``--allow-not-measurable``: the measurable claims all held, and at least one
was measured — the check never passes on no measurement); 2 bad input (no results.json,
another schema).

The run's models are found by the names ``examples/paper/audit.yaml`` gives them
(:data:`PAPER_MODELS`); ``--model KEY=NAME`` maps a model named otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sing_audit.commands import Command
from sing_audit.errors import BadInputError
from sing_audit.hookspecs import hookimpl
from sing_audit.terminal import plain, suggest

__all__ = [
    "CLAIMS",
    "PAPER_MODELS",
    "RANDOM_STAMP",
    "ClaimCheck",
    "CheckClaims",
    "check_claims",
    "exit_code",
]

#: the key of each of the paper's backbones -> (its model name in examples/paper/audit.yaml, the paper's name)
PAPER_MODELS: dict[str, tuple[str, str]] = {
    "dino_vit": ("dino_vit", "DINO ViT"),
    "resnet50": ("resnet50", "ResNet-50"),
    "resnext101": ("resnext101", "ResNeXt-101"),
    "efficientnet_b4": ("efficientnet_b4", "EfficientNet-B4"),
    "bit_resnetv2": ("bit_resnetv2", "BiT ResNet-v2"),
}

#: the paper's steering |AS| (degrees): model key -> (mean, its ±)
PAPER_STEERING: dict[str, tuple[float, float]] = {"resnet50": (12.04, 0.25), "dino_vit": (5.0, 0.59)}
#: a steering value holds within this many combined standard deviations (paper's ± and the run's standard error)
STEERING_SIGMAS = 3.0
#: the paper's translator logit correlation, and how far below it a measurement still holds the claim
PAPER_LOGIT_CORRELATION = 0.972
LOGIT_CORRELATION_MARGIN = 0.02

CLAIMS: dict[str, str] = {
    "ratio_order": "DINO ViT has the highest IS/AS ratio and ResNeXt-101 the lowest of the five backbones",
    "steering": "steering |AS|: ResNet-50 12.04 ± 0.25°, DINO ViT 5.0 ± 0.59°",
    "logit_correlation": "the translator keeps the target's logits: Pearson r 0.972",
}

RANDOM_STAMP = "RANDOM WEIGHTS: numbers from random weights prove nothing"

HELD, NOT_HELD, NOT_MEASURABLE = "held", "not held", "not measurable"


@dataclass
class ClaimCheck:
    """One claim's verdict: ``status`` (held / not held / not measurable), the measured
    value, the paper's, the tolerance, per-model figures and the reasons behind it."""

    id: str
    claim: str
    status: str
    measured: Any
    paper: Any
    tolerance: str
    figures: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


def _models(result, names: dict[str, str], target: str | None) -> tuple[dict[str, Any], str | None]:
    """``{key: ModelResult}`` of the paper's models found in ``result`` under one target."""
    targets = list(dict.fromkeys(m.target for m in result.models))
    if target is None:
        if len(targets) > 1:
            raise BadInputError(
                f"this run audited its models against {len(targets)} targets ({', '.join(targets)}); "
                "choose the paper's (Karlo) with --target NAME"
            )
        target = targets[0] if targets else None
    elif target not in targets:
        raise BadInputError(f"--target: the run has no target {target!r}{suggest(target, targets)}")
    found = {key: m for key in PAPER_MODELS for m in result.models if m.target == target and m.name == names[key]}
    return found, target


def _unusable(key: str, models: dict[str, Any], names: dict[str, str]) -> str | None:
    """Why model ``key`` gives no measurement for a claim (None: it does)."""
    label = PAPER_MODELS[key][1]
    m = models.get(key)
    if m is None:
        return f"{label}: no model named {names[key]!r} in the run (map another with --model {key}=NAME)"
    if m.random_weights:
        parts = ", ".join(m.random_weights_parts) or "random weights"
        return f"{label} ({m.name}): random weights ({parts})"
    if not m.assessed:
        return f"{label} ({m.name}): not assessed ({'; '.join(m.not_assessed_reasons) or 'no reason recorded'})"
    return None


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def check_ratio_order(models: dict[str, Any], names: dict[str, str]) -> ClaimCheck:
    ratios = {key: (models[key].is_as_ratio if key in models else None) for key in PAPER_MODELS}
    reasons = [r for key in PAPER_MODELS if (r := _unusable(key, models, names))]
    reasons += [f"{PAPER_MODELS[k][1]}: IS/AS ratio undefined (no null space or no attribute change)"
                for k, v in ratios.items() if v is None and k in models]
    figures = {PAPER_MODELS[k][1]: v for k, v in ratios.items()}
    highest = lowest = None
    if all(v is not None for v in ratios.values()):
        highest = PAPER_MODELS[max(ratios, key=lambda k: ratios[k])][1]
        lowest = PAPER_MODELS[min(ratios, key=lambda k: ratios[k])][1]
    measured = None if highest is None else {"highest": highest, "lowest": lowest}
    if reasons or measured is None:
        status = NOT_MEASURABLE
    else:
        status = HELD if (highest, lowest) == ("DINO ViT", "ResNeXt-101") else NOT_HELD
    return ClaimCheck(
        "ratio_order", CLAIMS["ratio_order"], status, measured, {"highest": "DINO ViT", "lowest": "ResNeXt-101"},
        "the order of the five point estimates (a ranking has no numeric tolerance; the intervals are in results.json)",
        figures, reasons,
    )


def steering_figure(m) -> tuple[float | None, float | None, str | None]:
    """``(mean |AS|, its standard error, why not)`` of a model's steering summary.

    The mean, over the steering targets (the config's pairs), of each target's |mean AS|;
    its standard error from each target's image spread, ``sqrt(Σ_k σ_k²/n_k) / K`` (the
    pairs steer different images, so their errors add in quadrature)."""
    summary = m.probes.get("steering")
    if not summary:
        return None, None, "the steering probe did not run"
    targets = [t for t in summary.get("targets") or [] if t.get("as_mean") is not None and (t.get("n") or 0) > 0]
    if not targets:
        return None, None, summary.get("note") or "the steering probe had nothing to steer"
    k = len(targets)
    mean = sum(abs(float(t["as_mean"])) for t in targets) / k
    se = math.sqrt(sum(float(t.get("as_std") or 0.0) ** 2 / int(t["n"]) for t in targets)) / k
    return mean, se, None


def check_steering(models: dict[str, Any], names: dict[str, str]) -> ClaimCheck:
    reasons, figures, parts = [], {}, []
    values: dict[str, tuple[float, float]] = {}
    for key, (paper_mean, paper_sd) in PAPER_STEERING.items():
        label = PAPER_MODELS[key][1]
        m = models.get(key)
        mean, se, why = steering_figure(m) if m is not None else (None, None, None)
        figures[label] = {"as_abs": mean, "se": se}
        if (bad := _unusable(key, models, names)) is not None:
            reasons.append(bad)
        elif why is not None:
            reasons.append(f"{label} ({m.name}): {why}")
        if mean is not None:
            values[key] = (mean, se)
            tol = STEERING_SIGMAS * math.hypot(paper_sd, se)
            figures[label].update(paper=paper_mean, tolerance=tol, within=abs(mean - paper_mean) <= tol)
            parts.append(abs(mean - paper_mean) <= tol)
    measured = {PAPER_MODELS[k][1]: v[0] for k, v in values.items()} or None
    if reasons or len(values) < len(PAPER_STEERING):
        status = NOT_MEASURABLE
    else:
        ordered = values["resnet50"][0] > values["dino_vit"][0]
        figures["ResNet-50 above DINO ViT"] = ordered
        status = HELD if ordered and all(parts) else NOT_HELD
    return ClaimCheck(
        "steering", CLAIMS["steering"], status, measured, {PAPER_MODELS[k][1]: v[0] for k, v in PAPER_STEERING.items()},
        f"ResNet-50 above DINO ViT, and each within {STEERING_SIGMAS:g}·sqrt(paper ±² + run's standard error²) "
        "of the paper's value",
        figures, reasons,
    )


def check_logit_correlation(models: dict[str, Any], names: dict[str, str]) -> ClaimCheck:
    reasons = [r for key in PAPER_MODELS if (r := _unusable(key, models, names))]
    figures = {PAPER_MODELS[k][1]: (models[k].fidelity.logit_correlation if k in models else None) for k in PAPER_MODELS}
    missing = [label for label, v in figures.items() if v is None and any(PAPER_MODELS[k][1] == label for k in models)]
    reasons += [f"{label}: no fidelity.logit_correlation in results.json (a run before schema 1.3?)" for label in missing]
    present = [v for v in figures.values() if v is not None]
    measured = sum(present) / len(present) if present and len(present) == len(PAPER_MODELS) else None
    if reasons or measured is None:
        status = NOT_MEASURABLE
    else:
        status = HELD if measured >= PAPER_LOGIT_CORRELATION - LOGIT_CORRELATION_MARGIN else NOT_HELD
    return ClaimCheck(
        "logit_correlation", CLAIMS["logit_correlation"], status, measured, PAPER_LOGIT_CORRELATION,
        f"the mean over the five models at least {PAPER_LOGIT_CORRELATION - LOGIT_CORRELATION_MARGIN:.3f} "
        f"(the paper's value − {LOGIT_CORRELATION_MARGIN}); a higher r is a more faithful translator, not a contradiction",
        figures, reasons,
    )


def check_claims(result, names: dict[str, str] | None = None, target: str | None = None) -> dict[str, Any]:
    """The report of every claim on ``result`` (an :class:`~sing_audit.results.AuditResult`)."""
    names = {key: n for key, (n, _) in PAPER_MODELS.items()} | dict(names or {})
    models, target = _models(result, names, target)
    claims = [check_ratio_order(models, names), check_steering(models, names), check_logit_correlation(models, names)]
    random_parts = sorted({p for m in result.models for p in (m.random_weights_parts or ([m.name] if m.random_weights else []))})
    return {
        "run": result.name,
        "target": target,
        "random_weights": bool(result.random_weights or random_parts),
        "stamp": f"{RANDOM_STAMP} ({', '.join(random_parts)})" if (result.random_weights or random_parts) else None,
        "models": {key: (models[key].name if key in models else None) for key in PAPER_MODELS},
        "claims": [asdict(c) for c in claims],
    }


def exit_code(report: dict[str, Any], allow_not_measurable: bool = False) -> int:
    """0 when every claim held; 1 when one is not held, when one is not measurable
    (unless ``allow_not_measurable``) and always when nothing was measured."""
    statuses = [c["status"] for c in report["claims"]]
    if NOT_HELD in statuses or HELD not in statuses:
        return 1
    if NOT_MEASURABLE in statuses and not allow_not_measurable:
        return 1
    return 0


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def render_text(report: dict[str, Any]) -> str:
    lines = []
    if report["stamp"]:
        lines += [report["stamp"], ""]
    lines.append(f"Paper claims (Make it SING, CVPR 2026) on run {report['run']}, target {report['target']}:")
    for c in report["claims"]:
        lines += [
            "",
            f"[{c['status'].upper()}] {c['id']}: {c['claim']}",
            f"  measured:  {_fmt(c['measured'])}",
            f"  paper:     {_fmt(c['paper'])}",
            f"  tolerance: {c['tolerance']}",
        ]
        for label, v in c["figures"].items():
            lines.append(f"  {label}: {_fmt(v)}")
        lines += [f"  not measurable: {r}" for r in c["reasons"]]
    counts = {s: sum(c["status"] == s for c in report["claims"]) for s in (HELD, NOT_HELD, NOT_MEASURABLE)}
    lines += ["", f"{counts[HELD]} held, {counts[NOT_HELD]} not held, {counts[NOT_MEASURABLE]} not measurable"
              + (" (nothing was checked)" if counts[NOT_MEASURABLE] == len(report["claims"]) else "")]
    if report["stamp"]:
        lines.append(RANDOM_STAMP)
    return "\n".join(lines)


def _names(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, name = pair.partition("=")
        if not sep or not name:
            raise BadInputError(f"--model {pair!r}: write KEY=NAME, KEY one of {', '.join(PAPER_MODELS)}")
        if key not in PAPER_MODELS:
            raise BadInputError(f"--model {pair!r}: no paper model {key!r}{suggest(key, list(PAPER_MODELS))}")
        out[key] = name
    return out


class CheckClaims(Command):
    """``sing-audit check-claims RUN``: the paper's published claims against a finished run."""

    help = "compare a finished run of examples/paper with the SING paper's claims (exit 1 unless every claim held)"
    description = (
        "Compare a finished run of examples/paper/audit.yaml with the claims of 'Make it SING' (CVPR 2026): the "
        "IS/AS ratio order of its five backbones, the steering |AS| of ResNet-50 and DINO ViT, and the translator's "
        "logit correlation. Each claim is held, not held or not measurable (a model missing, random weights, not "
        "assessed), with the measured value, the paper's and the tolerance (docs/reproduce.md). Exit 0 when every "
        "claim held; 1 when one is not held or not measurable (--allow-not-measurable: when a measurable one is "
        "not held, or none was measured); 2 on bad input."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", metavar="RUN", type=Path, help="the run folder (or its results.json)")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument(
            "--model", action="append", default=[], metavar="KEY=NAME",
            help=f"the run's name for a paper model (KEY: {', '.join(PAPER_MODELS)}; default: the names of "
            "examples/paper/audit.yaml; repeatable)",
        )
        parser.add_argument("--target", help="the target the claims are read under (required when the run has several)")
        parser.add_argument(
            "--allow-not-measurable", action="store_true",
            help="exit 0 when the measurable claims held though others were not measurable (never when none was)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from sing_audit.compare import load_result

        result, _, _ = load_result(args.run_dir)
        report = check_claims(result, _names(args.model), args.target)
        code = exit_code(report, args.allow_not_measurable)
        if args.json:
            print(json.dumps(report | {"exit_code": code}, indent=2, ensure_ascii=False))
        else:
            print(plain(render_text(report)))
        return code


@hookimpl
def register_commands(register):
    register("check-claims", CheckClaims)
