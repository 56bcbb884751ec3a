"""The command line's grammar: every command, its arguments and their help."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__

__all__ = ["build_parser"]


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


def _add_global_flags(p: argparse.ArgumentParser, *, in_command: bool = False) -> None:
    """The flags every command takes, before or after the command's name (``sing-audit
    --debug run x.yaml`` and ``sing-audit run --debug x.yaml``). A subcommand's copy
    defaults to ``SUPPRESS`` so that it never resets what the main parser read."""
    unset = argparse.SUPPRESS if in_command else False
    p.add_argument("--debug", action="store_true", default=unset, help="show tracebacks for every error")
    p.add_argument("-q", "--quiet", action="store_true", default=unset,
                   help="no progress bars or progress lines (the verdict and errors are still printed)")


def _add_cache(sub) -> None:
    """``cache info|prune|clear``: the cache shared across audits."""
    p = sub.add_parser(
        "cache",
        help="the cache shared across audits: info, prune, clear",
        description="The cache shared across audits (features, embeddings, text embeddings): where it is and "
        "why (run.cache_dir, SING_AUDIT_CACHE_DIR or the user's cache folder), what it holds, least-recently-used "
        "pruning to its bound, clearing. Output folders' own caches are never touched.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("info", "the folder, whether it is on and why, entries per kind, size, bound, oldest and newest use"),
                       ("prune", "remove least recently used entries down to the bound (or --max-size)"),
                       ("clear", "remove every entry (asks on a terminal; --yes elsewhere)")):
        a = actions.add_parser(name, help=text, description=text)
        a.add_argument("--cache-dir", type=Path, metavar="PATH",
                       help="the shared cache folder (default: SING_AUDIT_CACHE_DIR, else the user's cache folder)")
        if name == "prune":
            a.add_argument("--max-size", metavar="SIZE", help="prune down to SIZE (e.g. 5GB, 500MiB) instead of the bound")
        if name == "clear":
            a.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        _add_global_flags(a, in_command=True)


def build_parser(plugin_commands: dict | None = None) -> argparse.ArgumentParser:
    """The whole grammar: the core's commands, then ``plugin_commands`` (name ->
    :class:`~sing_audit.commands.Command`, from the ``register_commands`` hook)."""
    parser = argparse.ArgumentParser(
        prog="sing-audit",
        description="Audit image classifiers for meaning hidden in the null space of their linear head.",
    )
    parser.add_argument("--version", action="version", version=f"sing-audit {__version__}")
    _add_global_flags(parser)
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
    _add_cache(sub)
    for name, command in sorted((plugin_commands or {}).items()):
        p = sub.add_parser(name, help=command.help, description=command.description or command.help)
        command.add_arguments(p)
    for command in sub.choices.values():
        _add_global_flags(command, in_command=True)
    return parser
