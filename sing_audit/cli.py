"""``sing-audit``: run | validate | schema | plugins.

Exit codes of ``run``: 0 passed, 1 policy failed, 2 bad input, 70 internal error,
130 interrupted. Other commands exit 0 on success and 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from . import __version__
from .errors import BadInputError, PluginError, SingAuditError

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
    p.add_argument("--force", action="store_true", help="write into an output folder that holds another audit")
    _add_override(p)

    p = sub.add_parser("validate", help="check a config and its plugins' options without running")
    p.add_argument("config", type=Path, help="audit.yaml")
    _add_override(p)

    sub.add_parser("schema", help="print the JSON Schema of audit.yaml, with installed plugins' options")

    p = sub.add_parser("plugins", help="list every registered component and the package it comes from")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _print_error(kind: str, exc: BaseException) -> None:
    print(f"sing-audit: {kind}: {exc}", file=sys.stderr)


def _cmd_run(args) -> int:
    from .runner import run_audit

    result = run_audit(args.config, force=args.force, overrides=args.override)
    for m in result.models:
        ratio = "undefined (no null space)" if m.is_as_ratio is None else f"{m.is_as_ratio:.2f}"
        stamp = "  [RANDOM WEIGHTS]" if m.random_weights else ""
        print(
            f"{m.name} @ {m.target}: null dim {m.null_dim} ({m.rank_rule}), mean IS {m.is_mean:.2f}°, "
            f"mean |AS| {m.as_abs_mean:.2f}°, IS/AS {ratio}, flagged {m.n_flagged}{stamp}"
        )
    print(result.verdict)
    from .config import load_config

    print(f"results: {load_config(args.config, args.override).output_dir / 'results.json'}")
    return EXIT_PASSED if result.passed else EXIT_POLICY_FAILED


def _cmd_validate(args) -> int:
    from .config import load_config
    from .host import create_registry
    from .runner import build_plan

    cfg = load_config(args.config, args.override)
    plan = build_plan(cfg, create_registry(), str(args.config))
    print(
        f"{args.config}: valid — {len(plan.backbones)} backbone(s), {len(plan.targets)} target(s), "
        f"probes {', '.join(p.plugin for p in plan.probes)}; output {cfg.output_dir}"
    )
    return 0


def _cmd_schema(args) -> int:
    from .config import config_schema
    from .host import create_registry

    print(json.dumps(config_schema(create_registry()), indent=2, default=str))
    return 0


def _cmd_plugins(args) -> int:
    from .host import create_registry

    rows = [
        {"kind": r.kind, "name": r.name, "package": r.package, "module": r.plugin, "doc": (r.factory.__doc__ or "").strip().split("\n")[0]}
        for r in create_registry().all()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows) if rows else 4
    current = None
    for r in rows:
        if r["kind"] != current:
            current = r["kind"]
            print(f"{current}s:")
        print(f"  {r['name']:<{width}}  {r['package']}  — {r['doc']}")
    return 0


COMMANDS = {"run": _cmd_run, "validate": _cmd_validate, "schema": _cmd_schema, "plugins": _cmd_plugins}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("sing-audit: interrupted", file=sys.stderr)
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
    except SingAuditError as exc:
        if args.debug:
            traceback.print_exc()
        _print_error("error", exc)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - a bug: never read as a verdict
        log_hint = _log_hint(args)
        traceback.print_exc() if args.debug else None
        print(
            f"sing-audit: internal error (a bug, not a verdict): {exc.__class__.__name__}: {exc}\n"
            f"{log_hint}Rerun with --debug for the traceback, and report it with the log.",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _log_hint(args) -> str:
    config = getattr(args, "config", None)
    if config is None:
        return ""
    try:
        from .config import load_config

        out = load_config(config, getattr(args, "override", None)).output_dir
    except Exception:  # noqa: BLE001 - best effort only
        return ""
    return f"The log is at {out / 'logs' / 'run.log'}.\n"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
