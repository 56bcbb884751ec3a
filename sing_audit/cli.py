"""``sing-audit``: run | validate | schema | plugins | report | diff.

Exit codes of ``run``: 0 passed, 1 policy failed, 2 bad input, 70 internal error,
130 interrupted. ``diff`` exits 1 when it finds a regression (a class whose leakage
grew beyond its confidence intervals). Other commands exit 0 on success and 2 on bad
input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from . import __version__
from .errors import BadInputError, OutputWriteError, PluginError, SingAuditError
from .terminal import plain, shorten

EXIT_PASSED = 0
EXIT_POLICY_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

__all__ = ["main", "build_parser"]


def _add_override(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by its dotted path, e.g. -o policy.as_threshold=3 (repeatable)",
    )


def _add_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait",
        nargs="?",
        type=float,
        const=-1.0,
        default=None,
        metavar="SECONDS",
        help="when another run holds the output folder, wait for it (at most SECONDS; without a value, as long "
        "as it takes) instead of exiting 2",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sing-audit",
        description="Audit image classifiers for meaning hidden in the null space of their linear head.",
    )
    parser.add_argument("--version", action="version", version=f"sing-audit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run an audit and write results.json and the report")
    p.add_argument("config", type=Path, help="audit.yaml")
    p.add_argument(
        "--force", action="store_true",
        help="replace an output folder that holds another audit (the files sing-audit wrote there are removed)",
    )
    _add_wait(p)
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="extract only slice I of N (0-based) into the store and stop, for job arrays; then `sing-audit merge`. "
        "Under torchrun the shard comes from RANK/WORLD_SIZE and rank 0 merges and analyses by itself",
    )
    _add_override(p)

    p = sub.add_parser(
        "merge",
        help="join the shards of `run --shard I/N` and run the analysis (exit codes as `run`)",
        description="Join the shards that `sing-audit run CONFIG --shard I/N` extracted (all N of them must have "
        "finished), atomically, then analyse and report exactly as `run` does. Nothing is extracted: a missing "
        "shard is an error (exit 2) that names it.",
    )
    p.add_argument("config", type=Path, help="audit.yaml (the same one the shards ran)")
    p.add_argument("--force", action="store_true", help="replace an output folder that holds another audit")
    _add_wait(p)
    _add_override(p)

    p = sub.add_parser("validate", help="check a config and its plugins' options without running")
    p.add_argument("config", type=Path, help="audit.yaml")
    _add_override(p)

    sub.add_parser("schema", help="print the JSON Schema of audit.yaml, with installed plugins' options")

    p = sub.add_parser("plugins", help="list every registered component and the package it comes from")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser(
        "report",
        help="re-render a run's outputs from its results.json alone (no models, no cache)",
        description="Re-render a run's outputs (HTML, CSV, JUnit, Markdown, ...) from RUN_DIR/results.json "
        "alone: no model, data or cache is needed. results.json itself is never rewritten.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="output folder of a run (or its results.json)")
    p.add_argument(
        "-f",
        "--format",
        dest="formats",
        action="append",
        default=[],
        metavar="FMT[,FMT...]",
        help="formats to write, e.g. html,junit,markdown (repeatable; default: the run's report.formats)",
    )

    p = sub.add_parser(
        "diff",
        help="compare two audits; exit 1 when a class's leakage grew beyond its confidence intervals",
        description="Compare audit A (before, e.g. the released checkpoint) with audit B (after). A class "
        "regressed when the 95% intervals of its mean |AS| are disjoint with B higher and B has at least the "
        "policy's min_images images. Exit 1 when any class regressed (a regression gate for CI), 0 otherwise, "
        "2 on bad input.",
    )
    p.add_argument("run_a", type=Path, metavar="RUN_A", help="output folder (or results.json) of the earlier audit")
    p.add_argument("run_b", type=Path, metavar="RUN_B", help="output folder (or results.json) of the later audit")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON (DiffResult)")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME_A=NAME_B",
        help="compare model NAME_A of A with NAME_B of B (repeatable; NAME may be NAME@TARGET); "
        "replaces matching by name and target",
    )
    p.add_argument(
        "--min-delta",
        type=float,
        default=0.0,
        metavar="DEG",
        help="also require mean |AS| to grow by at least DEG degrees to count as a regression (default 0)",
    )

    p = sub.add_parser(
        "explain",
        help="one image's IS/AS, its most affected classes and what the audit's probes say about it",
        description="Explain one image under an audit: an image id or path of the audit's dataset (scored by the "
        "translator of the fold that did not see it) or a new image file (scored by the mean of the fold "
        "translators). Runs the config's probes (null_removal, concepts, steering, ...) on that image alone.",
    )
    p.add_argument("image", metavar="IMAGE", help="image id (as in the per-image CSV) or image file")
    p.add_argument("--config", type=Path, required=True, help="the audit's audit.yaml")
    p.add_argument("--model", help="backbone name (default: the first)")
    p.add_argument("--target", help="target name (default: the first)")
    p.add_argument("--label", help="class to score against (default: the image's label, else its prediction)")
    p.add_argument("--top", type=int, default=10, help="how many classes to list (default 10)")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    _add_override(p)
    return parser


def _say(text="") -> None:
    """Print a line (user-controlled text made inert: see :mod:`sing_audit.terminal`)."""
    print(plain(text))


def _warn(text) -> None:
    print(plain(text), file=sys.stderr)


def _say_json(data) -> None:
    """Print ``data`` as JSON; characters a terminal would act on are \\u-escaped
    (valid JSON: they can only occur inside strings)."""
    text = json.dumps(data, indent=2, default=str, ensure_ascii=False)
    print("".join(c if c.isprintable() or c in "\n " else json.dumps(c)[1:-1] for c in text))


def _print_error(kind: str, exc: BaseException) -> None:
    _warn(f"sing-audit: {kind}: {exc}")


def _cmd_run(args) -> int:
    from .pipeline.shard import parse_shard, shard_from_env

    shard = parse_shard(args.shard) if args.shard else shard_from_env()
    if shard is None:
        from .pipeline import run_audit

        return _print_result(args, run_audit(args.config, force=args.force, overrides=args.override, wait=args.wait, notify=_warn))
    if shard.distributed:
        return _run_distributed(args, shard)
    report = _run_one_shard(args, shard)
    _say(
        f"shard {shard}: rows {report.rows.start}–{report.rows.stop} of {report.n_images} extracted for "
        f"{', '.join(report.components) or 'nothing (every input is precomputed)'}\n"
        f"when all {shard.count} shards are done: {_command('merge', args)}"
    )
    return 0


def _command(name: str, args, *, same_flags: bool = False) -> str:
    """The ``sing-audit NAME`` command line for the same config and ``-o`` overrides
    (shell-quoted); with ``same_flags`` also the run's ``--debug``, ``--force``, ``--shard``."""
    import shlex

    parts = ["sing-audit", *(["--debug"] if same_flags and args.debug else []), name, str(args.config)]
    if same_flags:
        parts += ["--force"] if getattr(args, "force", False) else []
        parts += ["--shard", args.shard] if getattr(args, "shard", None) else []
    for item in args.override:
        parts += ["-o", item]
    return shlex.join(parts)


def _run_one_shard(args, shard):
    from .pipeline import run_shard

    return run_shard(args.config, shard, force=args.force, overrides=args.override, wait=args.wait, notify=_warn)


def _run_distributed(args, shard) -> int:
    """A torchrun worker: extract this rank's shard, wait for all, rank 0 merges and analyses."""
    from .config import load_config
    from .pipeline import run_audit
    from .pipeline.extraction import resolve_device
    from .pipeline.shard import barrier_and_leave, init_distributed

    init_distributed(resolve_device(load_config(args.config, args.override).run.device))
    _run_one_shard(args, shard)
    barrier_and_leave(keep=False)
    if shard.index != 0:
        return 0
    # the other ranks are done (barrier): wait for them to let go of the folder
    wait = args.wait if args.wait is not None else 600.0
    return _print_result(args, run_audit(args.config, force=args.force, overrides=args.override, merge_only=True, wait=wait, notify=_warn))


def _cmd_merge(args) -> int:
    from .pipeline import run_audit

    return _print_result(
        args, run_audit(args.config, force=args.force, overrides=args.override, merge_only=True, wait=args.wait, notify=_warn)
    )


EXIT_MEANING = {
    "passed": "the policy passed",
    "failed": "the policy failed",
    "not assessed": "a model could not be assessed, so the audit cannot pass (policy.allow_not_assessed lets it)",
}


def _print_models(result) -> None:
    for m in result.models:
        ratio = "undefined (no null space)" if m.is_as_ratio is None else f"{m.is_as_ratio:.2f}"
        stamp = "  [RANDOM WEIGHTS]" if m.random_weights else ""
        _say(
            f"{m.name} @ {m.target}: null dim {m.null_dim} ({m.rank_rule}), mean IS {m.is_mean:.2f}°, "
            f"mean |AS| {m.as_abs_mean:.2f}°, IS/AS {ratio}, {m.n_flagged} flagged of {m.n_judged} judged — "
            f"{m.outcome.upper()}{stamp}"
        )
        for reason in m.not_assessed_reasons:
            _say(f"  not assessed: {shorten(reason, 300)}")


def _print_result(args, result, written: list[str] | None = None) -> int:
    """The verdict, what the exit code means and every file written; returns the exit code."""
    _print_models(result)
    _say(shorten(result.verdict, 2000))
    code = EXIT_PASSED if result.passed else EXIT_POLICY_FAILED
    out = _output_dir(args)
    files = written if written is not None else list(dict.fromkeys(result.files.values()))
    if out is not None and files:
        _say(f"written to {out}:")
        for rel in files:
            _say(f"  {rel}")
    meaning = EXIT_MEANING[result.outcome]
    if result.passed and not result.assessed:
        meaning += " (models that could not be assessed are allowed by policy.allow_not_assessed)"
    _say(f"exit {code}: {meaning}")
    return code


def _output_dir(args) -> Path | None:
    try:
        from .config import load_config

        return load_config(args.config, args.override).output_dir
    except Exception:  # noqa: BLE001 - only for the message
        return None


def _cmd_validate(args) -> int:
    from .config import load_config
    from .host import create_registry
    from .pipeline import build_plan

    cfg = load_config(args.config, args.override)
    plan = build_plan(cfg, create_registry(), str(args.config))
    _say(
        f"{args.config}: valid — {len(plan.backbones)} backbone(s), {len(plan.targets)} target(s), "
        f"probes {', '.join(p.plugin for p in plan.probes)}; output {cfg.output_dir}"
    )
    return 0


def _cmd_schema(args) -> int:
    from .host import create_registry
    from .schema import config_schema

    _say_json(config_schema(create_registry()))
    return 0


def _cmd_plugins(args) -> int:
    from .host import create_registry

    rows = [
        {"kind": r.kind, "name": r.name, "package": r.package, "module": r.plugin, "doc": (r.factory.__doc__ or "").strip().split("\n")[0]}
        for r in create_registry().all()
    ]
    if args.json:
        _say_json(rows)
        return 0
    width = max(len(r["name"]) for r in rows) if rows else 4
    current = None
    for r in rows:
        if r["kind"] != current:
            current = r["kind"]
            _say(f"{current}s:")
        _say(f"  {r['name']:<{width}}  {r['package']}  — {plain(r['doc'], keep_newlines=False)}")
    return 0


DEFAULT_REPORT_FORMATS = ("json", "csv", "html")


def _split_formats(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        for fmt in value.split(","):
            fmt = fmt.strip()
            if fmt and fmt not in out:
                out.append(fmt)
    return out


def _cmd_report(args) -> int:
    from .compare import load_result
    from .host import create_registry, suggest
    from .store import atomic_write_bytes

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
    available = create_registry().reporters_by_format()
    for fmt in formats:
        if fmt not in available:
            hint = "" if where == "--format" else "; choose others with --format"
            raise BadInputError(f"{where}: unknown format {fmt!r}{suggest(fmt, list(available))}{hint}")
    original = path.read_bytes()
    for fmt in formats:
        if fmt == "json":
            _say(f"json: {path} (the source; left unchanged)")
            continue
        reg = available[fmt]
        written = reg.factory().write(result, out, fmt)
        if path.read_bytes() != original:  # results.json is the record of the audit: never rewritten here
            atomic_write_bytes(path, original)
            _warn(f"sing-audit: warning: reporter {reg.name!r} ({reg.package}) rewrote {path}; restored it")
        for p in written:
            _say(f"{fmt}: {p}")
    return 0


def _plain(text) -> str:
    """User-controlled text on one terminal line (control characters shown escaped)."""
    return plain(text, keep_newlines=False)


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


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


def _flagged_change(m) -> str:
    a, b = f"{m.n_flagged.a} of {m.n_judged.a}", f"{m.n_flagged.b} of {m.n_judged.b}"
    return a if a == b else f"{a} → {b}"


def _outcome_change(m) -> str:
    def word(passed: bool, assessed: bool) -> str:
        return "not assessed" if not assessed else "pass" if passed else "FAIL"

    a, b = word(m.passed_a, m.assessed_a), word(m.passed_b, m.assessed_b)
    return a if a == b else f"{a} → {b}"


def _print_diff(d) -> None:
    def ci(i) -> str:
        return "n/a" if i.low is None or i.high is None else f"{i.low:.2f}–{i.high:.2f}°"

    def pair(a: str, ta: str, b: str, tb: str) -> str:
        la, lb = f"{a}@{ta}", f"{b}@{tb}"
        return _plain(la if la == lb else f"{la} → {lb}")

    print(f"sing-audit diff: A = {_plain(d.run_a)} ({_plain(d.name_a)})  →  B = {_plain(d.run_b)} ({_plain(d.name_b)})")
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
    for line in _table(["model", "IS/AS", "mean |AS|", "null dim", "fidelity (cos)", "flagged of judged", "policy"], rows):
        print(line)

    def classes(title: str, hint: str, items) -> None:
        print()
        print(f"{title} ({len(items)}): {hint}")
        rows = [
            [
                pair(c.model_a, c.target_a, c.model_b, c.target_b),
                str(c.index),
                _plain(c.name if c.name == c.name_a else f"{c.name_a} → {c.name}"),
                f"{c.n_a} → {c.n_b}" if c.n_a != c.n_b else str(c.n_b),
                f"{'n/a' if c.as_abs_mean.a is None else f'{c.as_abs_mean.a:.2f}°'} [{ci(c.as_abs_ci_a)}]",
                f"{'n/a' if c.as_abs_mean.b is None else f'{c.as_abs_mean.b:.2f}°'} [{ci(c.as_abs_ci_b)}]",
                "n/a" if c.as_abs_mean.delta is None else f"{c.as_abs_mean.delta:+.2f}°",
                ("yes" if c.flagged_a else "no") + " → " + ("waived" if c.waived_b else "yes" if c.flagged_b else "no"),
            ]
            for c in items
        ]
        for line in _table(["model", "index", "class", "images", "A mean |AS| [95% CI]", "B mean |AS| [95% CI]", "change", "flagged"], rows):
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
            names = [_plain(f"{u.name}@{u.target}") for u in d.unmatched if u.side == side]
            if names:
                print(f"only in {side.upper()} (not compared): {', '.join(names)}")
    for w in d.warnings:
        print(f"warning: {_plain(w)}")
    print()
    rule = f"intervals disjoint, at least {d.min_images} images" + (f", growth ≥ {d.min_delta:g}°" if d.min_delta else "")
    if d.regressed:
        print(f"REGRESSION: {len(d.regressions)} class(es) leak more in B than in A ({rule})")
    else:
        print(f"OK: no class regressed ({rule})")


def _cmd_diff(args) -> int:
    from .compare import diff_results, load_result, parse_pairs

    pairs = parse_pairs(args.model)
    a, _, _ = load_result(args.run_a)
    b, _, _ = load_result(args.run_b)
    d = diff_results(a, b, pairs, min_delta=args.min_delta, run_a=str(args.run_a), run_b=str(args.run_b))
    if args.json:
        _say_json(d.model_dump(mode="json"))
    else:
        _print_diff(d)
    return EXIT_POLICY_FAILED if d.regressed else EXIT_PASSED


def _cmd_explain(args) -> int:
    from .pipeline.explain import explain_image

    r = explain_image(
        args.config, args.image, model=args.model, target=args.target, label=args.label, top_k=args.top,
        overrides=args.override,
    )
    if args.json:
        _say_json(r.model_dump(mode="json"))
        return 0
    stamp = "  [RANDOM WEIGHTS]" if r.random_weights else ""
    _say(f"{_plain(r.image)} ({r.source}) — {r.model} @ {r.target}{stamp}")
    _say(f"  class {_plain(shorten(r.class_name))!r} ({r.label_source}); predicted {_plain(shorten(r.predicted_name))!r}; translator: {r.translator}")
    contrast = "n/a" if r.attribute_contrast is None else f"{r.attribute_contrast:+.2f}°"
    _say(f"  null energy {r.null_energy:.3f}  IS {r.image_score:.2f}°  AS {r.attribute_score:+.2f}°  AS contrast {contrast}")
    _say("  classes most moved by null removal (AS):")
    for c in r.top_classes:
        _say(f"    {c.attribute_score:+8.2f}°  {_plain(shorten(c.name))}")
    concepts = r.probes.get("concepts", {}).get("per_class", {})
    for name, rows in concepts.items():
        _say(f"  top concepts ({_plain(shorten(name))}):")
        for row in rows:
            _say(f"    {row['as']:+8.2f}°  {_plain(shorten(row['concept']))}  (angle {row['angle']:.1f}°)")
    for row in r.probes.get("steering", {}).get("targets", []):
        _say(f"  steering toward {_plain(shorten(row['prompt']))!r}: AS {row['as_mean']:+.2f}°, IS {row['is_mean']:.2f}°, logit drift {row['logit_drift']:.2e}")
    return 0


COMMANDS = {
    "run": _cmd_run,
    "merge": _cmd_merge,
    "validate": _cmd_validate,
    "schema": _cmd_schema,
    "plugins": _cmd_plugins,
    "report": _cmd_report,
    "diff": _cmd_diff,
    "explain": _cmd_explain,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as exc:
        _warn(_interrupted(args, exc))
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of our output went away (e.g. `| head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (BadInputError, PluginError) as exc:
        if args.debug:
            traceback.print_exc()
        _print_error("error", exc)
        return EXIT_BAD_INPUT
    except OutputWriteError as exc:
        # the analysis finished: show its verdict and what is in place, then what failed
        _print_models(exc.result)
        _say(shorten(exc.result.verdict, 2000))
        if args.debug:
            traceback.print_exc()
        _print_error("error", exc)
        if exc.is_bug:
            _warn(f"{_log_hint(args, exc)}A reporter failed with a bug (exit 70); report it with the log.")
            return EXIT_INTERNAL
        return EXIT_BAD_INPUT
    except SingAuditError as exc:
        if args.debug:
            traceback.print_exc()
        _print_error("error", exc)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - a bug: never read as a verdict
        log_hint = _log_hint(args, exc)
        traceback.print_exc() if args.debug else None
        _warn(
            f"sing-audit: internal error (a bug, not a verdict): {exc.__class__.__name__}: {exc}\n"
            f"{log_hint}Rerun with --debug for the traceback, and report it with the log."
        )
        return EXIT_INTERNAL


def _interrupted(args, exc: KeyboardInterrupt) -> str:
    """What the terminal says on Ctrl-C. For an audit (run, merge): which stage was
    interrupted (``StageClock.stage`` notes it on the exception), that finished work is kept in
    the cache, and the command line that resumes it, rebuilt from the parsed arguments."""
    from .pipeline.stages import stage_exit

    if args.command not in ("run", "merge"):
        return "sing-audit: interrupted"
    where = stage_exit(exc)
    if where is None:
        lines = ["sing-audit: interrupted"]
    else:
        inside = f"inside {', '.join(where.outer)}, " if where.outer else ""
        lines = [f"sing-audit: interrupted during stage {where.name} ({inside}after {where.seconds:.2f}s)"]
    try:
        from .config import load_config

        cache = load_config(args.config, args.override).output_dir / "cache"
        lines.append(
            f"Finished work is kept in the cache in {cache} (features, embeddings, text embeddings, fitted "
            "translators, and the finished chunks of an interrupted extraction or text encoding)."
        )
    except Exception:  # noqa: BLE001 - best effort: reading the config may be what was interrupted
        pass
    shard = getattr(args, "shard", None)
    if args.command == "run" and shard is None:
        try:
            from .pipeline.shard import shard_from_env

            if shard_from_env() is not None:  # a torchrun worker: its command line is torchrun's
                lines.append("Resume by starting the same torchrun command again: every rank continues its shard.")
                return "\n".join(lines)
        except Exception:  # noqa: BLE001 - best effort
            pass
    note = " (every -o override again)" if args.override else ""
    lines.append(f"Resume with the same command{note}:\n  {_command(args.command, args, same_flags=True)}")
    return "\n".join(lines)


def _log_hint(args, exc: BaseException | None = None) -> str:
    """Where the log of the failed run is (it holds the traceback)."""
    path = getattr(exc, "sing_audit_log", None)
    if path is None:
        out = _output_dir(args) if getattr(args, "config", None) is not None else None
        path = out / "logs" / "run.log" if out is not None else None
    return f"The log is at {path}.\n" if path is not None else ""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
