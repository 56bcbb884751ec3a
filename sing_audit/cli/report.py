"""``report`` (re-render a run's outputs from its results.json) and ``diff`` (compare two
audits, a regression gate for CI)."""

from __future__ import annotations

from ..errors import BadInputError
from .exit_codes import EXIT_PASSED, EXIT_POLICY_FAILED
from .output import one_line, say, say_json, table, warn

__all__ = ["cmd_report", "cmd_diff", "DEFAULT_REPORT_FORMATS"]

DEFAULT_REPORT_FORMATS = ("json", "csv", "html")


def _split_formats(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        for fmt in value.split(","):
            fmt = fmt.strip()
            if fmt and fmt not in out:
                out.append(fmt)
    return out


def cmd_report(args) -> int:
    from ..compare import load_result
    from ..host import create_registry
    from ..pipeline.plan import create_reporter
    from ..store import atomic_write_bytes
    from ..terminal import suggest

    result, path, _ = load_result(args.run_dir)
    out = path.parent
    formats = _split_formats(args.formats)
    where = "--format"
    if not formats:
        recorded = (result.provenance.config.get("report") or {}).get("formats")
        if isinstance(recorded, list) and recorded and all(isinstance(f, str) for f in recorded):
            formats, where = _split_formats(recorded), "report.formats recorded in results.json"
        else:
            formats, where = list(DEFAULT_REPORT_FORMATS), "default formats"
    registry = create_registry()
    available = registry.reporters_by_format()
    for fmt in formats:
        if fmt not in available:
            hint = "" if where == "--format" else "; choose others with --format"
            raise BadInputError(f"{where}: unknown format {fmt!r}{suggest(fmt, list(available))}{hint}")
    report_config = result.provenance.config.get("report") or {}
    recorded_options = report_config.get("options") if isinstance(report_config.get("options"), dict) else {}
    reporters = {
        fmt: create_reporter(registry, fmt, recorded_options.get(fmt), source=f"{path} (report.options)")
        for fmt in formats
        if fmt != "json"
    }
    # publishers (experiment trackers) after the writers, as in a run
    order = sorted(formats, key=lambda f: f != "json" and getattr(reporters[f].instance, "publishes", False))
    original = path.read_bytes()
    for fmt in order:
        if fmt == "json":
            say(f"json: {path} (the source; left unchanged)")
            continue
        reporter = reporters[fmt]
        written = reporter.instance.write(result, out, fmt)
        if path.read_bytes() != original:  # results.json is the record of the audit: never rewritten here
            atomic_write_bytes(path, original)
            warn(f"sing-audit: warning: reporter {reporter.plugin!r} ({reporter.package}) rewrote {path}; restored it")
        for p in written:
            say(f"{fmt}: {p}")
    return 0


def cmd_diff(args) -> int:
    from ..compare import diff_results, load_result, parse_pairs

    pairs = parse_pairs(args.model)
    a, _, _ = load_result(args.run_a)
    b, _, _ = load_result(args.run_b)
    d = diff_results(a, b, pairs, min_delta=args.min_delta, run_a=str(args.run_a), run_b=str(args.run_b))
    if args.json:
        say_json(d.model_dump(mode="json"))
    else:
        _print_diff(d)
    return EXIT_POLICY_FAILED if d.regressed else EXIT_PASSED


def _change(c, digits: int = 2, unit: str = "") -> str:
    def v(x):
        return "n/a" if x is None else (f"{x:.{digits}f}{unit}" if isinstance(x, float) else f"{x}{unit}")

    if v(c.a) == v(c.b):  # equal at the shown precision
        text = v(c.a)
    else:
        text = f"{v(c.a)} → {v(c.b)}"
        if c.delta is not None and isinstance(c.a, float):
            text += f" ({c.delta:+.{digits}f}{unit})"
    return text + (" *" if c.beyond_ci else "")


def _either(a: str, b: str) -> str:
    """``a`` when both sides show the same, else ``a → b``."""
    return a if a == b else f"{a} → {b}"


def _flagged_change(m) -> str:
    return _either(f"{m.n_flagged.a} of {m.n_judged.a}", f"{m.n_flagged.b} of {m.n_judged.b}")


def _outcome_change(m) -> str:
    def word(passed: bool, assessed: bool) -> str:
        return "not assessed" if not assessed else "pass" if passed else "FAIL"

    return _either(word(m.passed_a, m.assessed_a), word(m.passed_b, m.assessed_b))


def _print_diff(d) -> None:
    def ci(i) -> str:
        return "n/a" if i.low is None or i.high is None else f"{i.low:.2f}–{i.high:.2f}°"

    def mean(x) -> str:
        return "n/a" if x is None else f"{x:.2f}°"

    def pair(a: str, ta: str, b: str, tb: str) -> str:
        return one_line(_either(f"{a}@{ta}", f"{b}@{tb}"))

    print(f"sing-audit diff: A = {one_line(d.run_a)} ({one_line(d.name_a)})  →  B = {one_line(d.run_b)} ({one_line(d.name_b)})")
    print()
    print("models (* = 95% intervals disjoint):")
    rows = [
        [
            pair(m.model_a, m.target_a, m.model_b, m.target_b),
            _change(m.is_as_ratio),
            _change(m.as_abs_mean, unit="°"),
            _change(m.null_dim),
            _change(m.fidelity_cosine, digits=3),
            _flagged_change(m),
            _outcome_change(m),
        ]
        for m in d.models
    ]
    for line in table(["model", "IS/AS", "mean |AS|", "null dim", "fidelity (cos)", "flagged of judged", "policy"], rows):
        print(line)

    def classes(title: str, hint: str, items) -> None:
        print()
        print(f"{title} ({len(items)}): {hint}")
        rows = [
            [
                pair(c.model_a, c.target_a, c.model_b, c.target_b),
                str(c.index),
                one_line(_either(c.name_a, c.name)),
                _either(str(c.n_a), str(c.n_b)),
                f"{mean(c.as_abs_mean.a)} [{ci(c.as_abs_ci_a)}]",
                f"{mean(c.as_abs_mean.b)} [{ci(c.as_abs_ci_b)}]",
                "n/a" if c.as_abs_mean.delta is None else f"{c.as_abs_mean.delta:+.2f}°",
                ("yes" if c.flagged_a else "no") + " → " + ("waived" if c.waived_b else "yes" if c.flagged_b else "no"),
            ]
            for c in items
        ]
        for line in table(["model", "index", "class", "images", "A mean |AS| [95% CI]", "B mean |AS| [95% CI]", "change", "flagged"], rows):
            print(line)

    sections = (
        ("REGRESSIONS", "leakage grew beyond the 95% intervals", d.regressions),
        ("newly flagged", "flagged in B, not in A", d.newly_flagged),
        ("no longer flagged", "flagged in A, not in B", d.no_longer_flagged),
        ("improvements", "leakage fell beyond the 95% intervals", d.improvements),
    )
    for title, hint, items in sections:
        if items:
            classes(title, hint, items)
    empty = [title for title, _, items in sections if not items]
    if empty:
        print()
        print(f"none: {', '.join(empty)}")
    if d.unmatched:
        print()
        for side in ("a", "b"):
            names = [one_line(f"{u.name}@{u.target}") for u in d.unmatched if u.side == side]
            if names:
                print(f"only in {side.upper()} (not compared): {', '.join(names)}")
    for w in d.warnings:
        print(f"warning: {one_line(w)}")
    print()
    rule = f"intervals disjoint, at least {d.min_images} images" + (f", growth ≥ {d.min_delta:g}°" if d.min_delta else "")
    if d.regressed:
        print(f"REGRESSION: {len(d.regressions)} class(es) leak more in B than in A ({rule})")
    else:
        print(f"OK: no class regressed ({rule})")
