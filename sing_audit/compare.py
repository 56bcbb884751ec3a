"""Comparing two audits (e.g. two checkpoints of one model): the regression gate.

:func:`diff_results` is pure: two :class:`~sing_audit.results.AuditResult` in, a
:class:`DiffResult` out. :func:`load_result` reads a run folder's ``results.json`` with
the checks the CLI needs (schema version, validation) and raises
:class:`~sing_audit.errors.BadInputError` with a readable message otherwise.

Models are matched by ``(name, target)`` or by explicit pairs; classes by head index.
A class **regressed** when its leakage grew beyond the confidence intervals: the 95%
intervals of mean |AS| are disjoint with B higher (``b.as_abs_ci.low >
a.as_abs_ci.high``) and B has at least the policy's ``min_images`` images (and, when
``min_delta`` is set, the mean grew by at least that many degrees). An **improvement**
is the mirror (``b.as_abs_ci.high < a.as_abs_ci.low``, A has enough images).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import BadInputError
from .results import SCHEMA_VERSION, AuditResult, ClassResult, Interval, ModelResult

__all__ = [
    "Change",
    "ClassChange",
    "DiffResult",
    "ModelDiff",
    "Unmatched",
    "diff_results",
    "load_result",
    "parse_pairs",
]

DEFAULT_MIN_IMAGES = 10


class _Diff(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Change(_Diff):
    """One number in A and in B (``delta = b − a``; ``None`` when either is undefined)."""

    a: int | float | None = None
    b: int | float | None = None
    delta: int | float | None = None
    beyond_ci: bool | None = Field(
        None, description="the 95% intervals of A and B are disjoint (None: no intervals for this figure)"
    )

    @classmethod
    def of(cls, a, b, ci_a: Interval | None = None, ci_b: Interval | None = None) -> Change:
        delta = None if a is None or b is None else b - a
        beyond = None
        if ci_a is not None and ci_b is not None:
            if None in (ci_a.low, ci_a.high, ci_b.low, ci_b.high):
                beyond = None
            else:
                beyond = bool(ci_b.low > ci_a.high or ci_b.high < ci_a.low)
        return cls(a=a, b=b, delta=delta, beyond_ci=beyond)


class ClassChange(_Diff):
    """One class of a matched pair of models, in A and in B."""

    model_a: str
    model_b: str
    target_a: str
    target_b: str
    index: int = Field(description="head index")
    name: str = Field(description="class name in B")
    name_a: str = Field(description="class name in A (differs from name when the heads' class lists differ)")
    n_a: int
    n_b: int
    as_abs_mean: Change
    as_abs_ci_a: Interval
    as_abs_ci_b: Interval
    as_contrast: Change
    is_mean: Change
    flagged_a: bool
    flagged_b: bool
    waived_b: bool = False


class ModelDiff(_Diff):
    """Model-level figures of a matched pair, and how many of its classes changed."""

    model_a: str
    model_b: str
    target_a: str
    target_b: str
    is_as_ratio: Change
    as_abs_mean: Change
    is_mean: Change
    null_dim: Change
    null_energy: Change
    fidelity_cosine: Change
    fidelity_r2: Change
    n_flagged: Change
    n_judged: Change = Field(default_factory=Change, description="classes with at least min_images images")
    passed_a: bool
    passed_b: bool
    assessed_a: bool = True
    assessed_b: bool = True
    random_weights_a: bool
    random_weights_b: bool
    regressions: int = 0
    improvements: int = 0
    newly_flagged: int = 0
    no_longer_flagged: int = 0
    unmatched_classes_a: list[int] = Field(default_factory=list, description="head indices only in A")
    unmatched_classes_b: list[int] = Field(default_factory=list, description="head indices only in B")


class Unmatched(_Diff):
    """A model present in one audit only (not compared)."""

    side: Literal["a", "b"]
    name: str
    target: str


class DiffResult(_Diff):
    """What changed from audit A to audit B; ``regressed`` is the gate."""

    run_a: str = ""
    run_b: str = ""
    name_a: str = ""
    name_b: str = ""
    min_images: int = Field(description="the policy's min_images (of B) a regressed class must reach")
    min_delta: float = Field(0.0, description="smallest growth of mean |AS| (degrees) counted as a regression")
    regressed: bool = False
    regressions: list[ClassChange] = Field(default_factory=list)
    improvements: list[ClassChange] = Field(default_factory=list)
    newly_flagged: list[ClassChange] = Field(default_factory=list)
    no_longer_flagged: list[ClassChange] = Field(default_factory=list)
    models: list[ModelDiff] = Field(default_factory=list)
    unmatched: list[Unmatched] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- loading


def _major(version: str) -> str:
    return str(version).split(".", 1)[0]


def load_result(run: str | Path) -> tuple[AuditResult, Path, str]:
    """``(result, results.json path, its exact text)`` for a run folder or a results.json file.

    Raises :class:`BadInputError` for a missing folder or file, invalid JSON, a different
    major schema version, or a file that does not validate.
    """
    run = Path(run)
    if run.is_dir():
        path = run / "results.json"
    elif run.is_file():
        path = run
    else:
        raise BadInputError(f"run folder {run} not found")
    if not path.is_file():
        raise BadInputError(f"{run} holds no results.json: is it the output folder of a sing-audit run?")
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path} is not UTF-8 text: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    if not isinstance(data, dict) or "schema_version" not in data:
        raise BadInputError(f"{path} is not a sing-audit results.json (no schema_version at its top level)")
    version = str(data["schema_version"])
    if _major(version) != _major(SCHEMA_VERSION):
        raise BadInputError(
            f"{path} has schema version {version}, but this sing-audit reads version {_major(SCHEMA_VERSION)}.x "
            f"(current {SCHEMA_VERSION}); use the sing-audit version that wrote it, or rerun the audit"
        )
    try:
        result = AuditResult.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        raise BadInputError(f"{path} does not match the results schema {version}: {problems}{more}") from exc
    return result, path, text


# --------------------------------------------------------------------------- matching


def parse_pairs(specs: list[str] | None) -> list[tuple[str, str]]:
    """``["a=b", ...]`` -> ``[("a", "b"), ...]``; each side may be ``name`` or ``name@target``."""
    pairs = []
    for spec in specs or []:
        left, sep, right = spec.partition("=")
        if not sep or not left.strip() or not right.strip():
            raise BadInputError(f"--model {spec!r}: expected NAME_A=NAME_B (each optionally NAME@TARGET)")
        pairs.append((left.strip(), right.strip()))
    return pairs


def _label(m: ModelResult) -> str:
    return f"{m.name}@{m.target}"


def _select(models: list[ModelResult], spec: str) -> list[ModelResult]:
    """Models named ``spec`` (or exactly ``name@target``)."""
    exact = [m for m in models if _label(m) == spec]
    return exact or [m for m in models if m.name == spec]


def _names(models: list[ModelResult]) -> str:
    return ", ".join(_label(m) for m in models) or "(none)"


def _match_models(a: AuditResult, b: AuditResult, pairs: list[tuple[str, str]]) -> list[tuple[ModelResult, ModelResult]]:
    if not pairs:
        index_b = {(m.name, m.target): m for m in b.models}
        return [(m, index_b[(m.name, m.target)]) for m in a.models if (m.name, m.target) in index_b]
    matched: list[tuple[ModelResult, ModelResult]] = []
    for left, right in pairs:
        in_a, in_b = _select(a.models, left), _select(b.models, right)
        if not in_a:
            raise BadInputError(f"--model {left}={right}: no model {left!r} in run A; it has {_names(a.models)}")
        if not in_b:
            raise BadInputError(f"--model {left}={right}: no model {right!r} in run B; it has {_names(b.models)}")
        if len(in_a) == 1 and len(in_b) == 1:
            matched.append((in_a[0], in_b[0]))
            continue
        by_target = {m.target: m for m in in_b}
        found = [(m, by_target[m.target]) for m in in_a if m.target in by_target]
        if not found:
            raise BadInputError(
                f"--model {left}={right}: the two sides share no target (A: {_names(in_a)}; B: {_names(in_b)}); "
                "name them as NAME@TARGET"
            )
        matched.extend(found)
    seen: set[tuple[str, str, str]] = set()
    for ma, mb in matched:
        for side, m in (("a", ma), ("b", mb)):
            key = (side, m.name, m.target)
            if key in seen:
                raise BadInputError(f"--model: {_label(m)} of run {side.upper()} is paired twice")
            seen.add(key)
    return matched


# --------------------------------------------------------------------------- comparing


def _class_change(ma: ModelResult, mb: ModelResult, ca: ClassResult, cb: ClassResult) -> ClassChange:
    return ClassChange(
        model_a=ma.name,
        model_b=mb.name,
        target_a=ma.target,
        target_b=mb.target,
        index=cb.index,
        name=cb.name,
        name_a=ca.name,
        n_a=ca.n,
        n_b=cb.n,
        as_abs_mean=Change.of(ca.as_abs_mean, cb.as_abs_mean, ca.as_abs_ci, cb.as_abs_ci),
        as_abs_ci_a=ca.as_abs_ci,
        as_abs_ci_b=cb.as_abs_ci,
        as_contrast=Change.of(ca.as_contrast, cb.as_contrast, ca.as_contrast_ci, cb.as_contrast_ci),
        is_mean=Change.of(ca.is_mean, cb.is_mean, ca.is_ci, cb.is_ci),
        flagged_a=ca.flagged,
        flagged_b=cb.flagged,
        waived_b=cb.waived,
    )


def _grew(ca: ClassResult, cb: ClassResult, min_images: int, min_delta: float) -> bool:
    if cb.n < min_images or cb.as_abs_ci.low is None or ca.as_abs_ci.high is None:
        return False
    if not cb.as_abs_ci.low > ca.as_abs_ci.high:
        return False
    if min_delta > 0:
        return ca.as_abs_mean is not None and cb.as_abs_mean is not None and cb.as_abs_mean - ca.as_abs_mean >= min_delta
    return True


def _min_images(result: AuditResult) -> int | None:
    value = result.policy.get("min_images")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def diff_results(
    a: AuditResult,
    b: AuditResult,
    pairs: list[tuple[str, str]] | None = None,
    *,
    min_delta: float = 0.0,
    run_a: str = "",
    run_b: str = "",
) -> DiffResult:
    """Compare audit ``a`` (before) with audit ``b`` (after).

    ``pairs``: explicit ``(name in A, name in B)`` pairs (each may be ``name@target``)
    that replace matching by ``(name, target)``. Raises :class:`BadInputError` when no
    model is in common, naming the models of each side.
    """
    if min_delta < 0:
        raise BadInputError(f"min_delta must be ≥ 0 degrees, got {min_delta}")
    matched = _match_models(a, b, list(pairs or []))
    if not matched:
        raise BadInputError(
            f"the two audits have no model in common (matched by name and target): A has {_names(a.models)}; "
            f"B has {_names(b.models)}. Pair them explicitly with --model NAME_A=NAME_B"
        )
    min_images = _min_images(b) or _min_images(a) or DEFAULT_MIN_IMAGES
    out = DiffResult(
        run_a=run_a, run_b=run_b, name_a=a.name, name_b=b.name, min_images=min_images, min_delta=min_delta
    )
    for key in ("as_threshold", "min_images"):
        if key in a.policy and key in b.policy and a.policy[key] != b.policy[key]:
            out.warnings.append(
                f"the policies differ: {key} is {a.policy[key]} in A and {b.policy[key]} in B "
                "(flags are compared as each audit set them)"
            )
    used_a = {(ma.name, ma.target) for ma, _ in matched}
    used_b = {(mb.name, mb.target) for _, mb in matched}
    out.unmatched = [Unmatched(side="a", name=m.name, target=m.target) for m in a.models if (m.name, m.target) not in used_a]
    out.unmatched += [Unmatched(side="b", name=m.name, target=m.target) for m in b.models if (m.name, m.target) not in used_b]

    for ma, mb in matched:
        md = ModelDiff(
            model_a=ma.name,
            model_b=mb.name,
            target_a=ma.target,
            target_b=mb.target,
            is_as_ratio=Change.of(ma.is_as_ratio, mb.is_as_ratio, ma.is_as_ratio_ci, mb.is_as_ratio_ci),
            as_abs_mean=Change.of(ma.as_abs_mean, mb.as_abs_mean, ma.as_abs_ci, mb.as_abs_ci),
            is_mean=Change.of(ma.is_mean, mb.is_mean, ma.is_ci, mb.is_ci),
            null_dim=Change.of(ma.null_dim, mb.null_dim),
            null_energy=Change.of(ma.null_energy, mb.null_energy),
            fidelity_cosine=Change.of(ma.fidelity.cosine, mb.fidelity.cosine),
            fidelity_r2=Change.of(ma.fidelity.r2, mb.fidelity.r2),
            n_flagged=Change.of(ma.n_flagged, mb.n_flagged),
            n_judged=Change.of(ma.n_judged, mb.n_judged),
            passed_a=ma.passed,
            passed_b=mb.passed,
            assessed_a=ma.assessed,
            assessed_b=mb.assessed,
            random_weights_a=ma.random_weights,
            random_weights_b=mb.random_weights,
        )
        pair = f"{_label(ma)} → {_label(mb)}" if _label(ma) != _label(mb) else _label(ma)
        if ma.rank_rule_label != mb.rank_rule_label:
            out.warnings.append(f"{pair}: rank rule {ma.rank_rule_label} in A, {mb.rank_rule_label} in B")
        if ma.random_weights != mb.random_weights:
            out.warnings.append(f"{pair}: random weights in {'A' if ma.random_weights else 'B'} only")
        classes_a = {c.index: c for c in ma.classes}
        classes_b = {c.index: c for c in mb.classes}
        md.unmatched_classes_a = sorted(set(classes_a) - set(classes_b))
        md.unmatched_classes_b = sorted(set(classes_b) - set(classes_a))
        renamed = [i for i in sorted(set(classes_a) & set(classes_b)) if classes_a[i].name != classes_b[i].name]
        if renamed:
            examples = ", ".join(f"{i}: {classes_a[i].name!r} → {classes_b[i].name!r}" for i in renamed[:3])
            out.warnings.append(
                f"{pair}: {len(renamed)} class(es) have another name at the same head index ({examples}"
                f"{', …' if len(renamed) > 3 else ''}); classes are matched by head index"
            )
        for index in sorted(set(classes_a) & set(classes_b)):
            ca, cb = classes_a[index], classes_b[index]
            change = None
            if _grew(ca, cb, min_images, min_delta):
                change = _class_change(ma, mb, ca, cb)
                out.regressions.append(change)
                md.regressions += 1
            elif _grew(cb, ca, min_images, min_delta):  # the mirror: A has enough images
                change = _class_change(ma, mb, ca, cb)
                out.improvements.append(change)
                md.improvements += 1
            if cb.flagged and not ca.flagged:
                out.newly_flagged.append(change or _class_change(ma, mb, ca, cb))
                md.newly_flagged += 1
            elif ca.flagged and not cb.flagged:
                out.no_longer_flagged.append(change or _class_change(ma, mb, ca, cb))
                md.no_longer_flagged += 1
        out.models.append(md)
    for group in (out.regressions, out.improvements, out.newly_flagged, out.no_longer_flagged):
        group.sort(key=lambda c: -abs(c.as_abs_mean.delta or 0.0))
    out.regressed = bool(out.regressions)
    return out
