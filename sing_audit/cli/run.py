"""``run`` and ``merge``: an audit, one shard of it, a torchrun worker; the verdict they
print, and what the terminal says when a run is interrupted or fails."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..terminal import shorten
from .exit_codes import EXIT_PASSED, EXIT_POLICY_FAILED
from .output import say, warn

__all__ = ["cmd_run", "cmd_merge", "print_models", "interrupted_message", "log_hint"]

EXIT_MEANING = {
    "passed": "the policy passed",
    "failed": "the policy failed",
    "not assessed": "a model could not be assessed, so the audit cannot pass (policy.allow_not_assessed lets it)",
}


def cmd_run(args) -> int:
    from ..pipeline.shard import parse_shard, shard_from_env

    shard = parse_shard(args.shard) if args.shard else shard_from_env()
    if shard is None:
        return _print_result(args, _audit(args, wait=args.wait))
    if shard.distributed:
        return _run_distributed(args, shard)
    report = _run_one_shard(args, shard)
    say(
        f"shard {shard}: rows {report.rows.start}–{report.rows.stop} of {report.n_images} extracted for "
        f"{', '.join(report.components) or 'nothing (every input is precomputed)'}\n"
        f"when all {shard.count} shards are done: {_command('merge', args)}"
    )
    return 0


def cmd_merge(args) -> int:
    return _print_result(args, _audit(args, merge_only=True, wait=args.wait))


def _audit(args, **how):
    """The audit of ``args.config`` with its ``-o`` overrides, warnings to stderr."""
    from ..pipeline import run_audit

    return run_audit(args.config, force=args.force, overrides=args.override, notify=warn, **how)


def _command(name: str, args, *, same_flags: bool = False) -> str:
    """The ``sing-audit NAME`` command line for the same config and ``-o`` overrides
    (shell-quoted); with ``same_flags`` also the run's ``--debug``, ``--quiet``, ``--force``, ``--shard``."""
    flags = [f for f in ("debug", "quiet") if same_flags and getattr(args, f, False)]
    parts = ["sing-audit", *(f"--{f}" for f in flags), name, str(args.config)]
    if same_flags:
        parts += ["--force"] if getattr(args, "force", False) else []
        parts += ["--shard", args.shard] if getattr(args, "shard", None) else []
    for item in args.override:
        parts += ["-o", item]
    return shlex.join(parts)


def _run_one_shard(args, shard):
    from ..pipeline import run_shard

    return run_shard(args.config, shard, force=args.force, overrides=args.override, wait=args.wait, notify=warn)


def _run_distributed(args, shard) -> int:
    """A torchrun worker: extract this rank's shard, wait for all, rank 0 merges and analyses."""
    from ..config import load_config
    from ..pipeline.extraction import resolve_device
    from ..pipeline.shard import barrier_and_leave, init_distributed

    init_distributed(resolve_device(load_config(args.config, args.override).run.device))
    _run_one_shard(args, shard)
    barrier_and_leave(keep=False)
    if shard.index != 0:
        return 0
    # the other ranks are done (barrier): wait for them to let go of the folder
    wait = args.wait if args.wait is not None else 600.0
    return _print_result(args, _audit(args, merge_only=True, wait=wait))


def print_models(result) -> None:
    """One line per model: its null space, scores and outcome."""
    for m in result.models:
        ratio = "undefined (no null space)" if m.is_as_ratio is None else f"{m.is_as_ratio:.2f}"
        stamp = "  [RANDOM WEIGHTS]" if m.random_weights else ""
        say(
            f"{m.name} @ {m.target}: null dim {m.null_dim} ({m.rank_rule_label}), mean IS {m.is_mean:.2f}°, "
            f"mean |AS| {m.as_abs_mean:.2f}°, IS/AS {ratio}, {m.n_flagged} flagged of {m.n_judged} judged — "
            f"{m.outcome.upper()}{stamp}"
        )
        for reason in m.not_assessed_reasons:
            say(f"  not assessed: {shorten(reason, 300)}")


def _print_result(args, result) -> int:
    """The verdict, what the exit code means and every file written; returns the exit code."""
    print_models(result)
    say(shorten(result.verdict, 2000))
    code = EXIT_PASSED if result.passed else EXIT_POLICY_FAILED
    out = _output_dir(args)
    files = list(dict.fromkeys(result.files.values()))
    if out is not None and files:
        say(f"written to {out}:")
        for rel in files:
            say(f"  {rel}")
    meaning = EXIT_MEANING[result.outcome]
    if result.passed and not result.assessed:
        meaning += " (models that could not be assessed are allowed by policy.allow_not_assessed)"
    say(f"exit {code}: {meaning}")
    return code


def _output_dir(args) -> Path | None:
    """The config's output folder, or ``None`` when the config cannot be read (for messages only)."""
    try:
        from ..config import load_config

        return load_config(args.config, args.override).output_dir
    except Exception:  # noqa: BLE001 - only for the message
        return None


def interrupted_message(args, exc: KeyboardInterrupt) -> str:
    """What the terminal says on Ctrl-C. For an audit (run, merge): which stage was
    interrupted (``StageClock.stage`` notes it on the exception), that finished work is kept in
    the cache, and the command line that resumes it, rebuilt from the parsed arguments."""
    from ..pipeline.stages import stage_exit

    if args.command not in ("run", "merge"):
        return "sing-audit: interrupted"
    where = stage_exit(exc)
    if where is None:
        lines = ["sing-audit: interrupted"]
    else:
        inside = f"inside {', '.join(where.outer)}, " if where.outer else ""
        lines = [f"sing-audit: interrupted during stage {where.name} ({inside}after {where.seconds:.2f}s)"]
    out = _output_dir(args)  # None when reading the config fails (it may be what was interrupted)
    if out is not None:
        lines.append(
            f"Finished work is kept in the cache in {out / 'cache'} (features, embeddings, text embeddings, fitted "
            "translators, and the finished chunks of an interrupted extraction or text encoding)."
        )
    shard = getattr(args, "shard", None)
    if args.command == "run" and shard is None:
        try:
            from ..pipeline.shard import shard_from_env

            if shard_from_env() is not None:  # a torchrun worker: its command line is torchrun's
                lines.append("Resume by starting the same torchrun command again: every rank continues its shard.")
                return "\n".join(lines)
        except Exception:  # noqa: BLE001 - best effort
            pass
    note = " (every -o override again)" if args.override else ""
    lines.append(f"Resume with the same command{note}:\n  {_command(args.command, args, same_flags=True)}")
    return "\n".join(lines)


def log_hint(args, exc: BaseException | None = None) -> str:
    """Where the log of the failed run is (it holds the traceback)."""
    path = getattr(exc, "sing_audit_log", None)
    if path is None:
        out = _output_dir(args) if getattr(args, "config", None) is not None else None
        path = out / "logs" / "run.log" if out is not None else None
    return f"The log is at {path}.\n" if path is not None else ""
