"""``sing-audit``: run | merge | validate | schema | plugins | report | diff | explain | cache, and the
commands plugins register (``register_commands``, :mod:`sing_audit.commands`).

Exit codes of ``run``: 0 passed, 1 policy failed, 2 bad input, 70 internal error,
130 interrupted. ``diff`` exits 1 when it finds a regression (a class whose leakage
grew beyond its confidence intervals). Other commands exit 0 on success and 2 on bad
input.

One module per job: :mod:`.parser` (the arguments), :mod:`.output` (what is printed and
how it is made safe for a terminal), :mod:`.run` (run, merge, shards, torchrun, and the
messages of an interrupted or failed run), :mod:`.introspect` (validate, schema,
plugins), :mod:`.report` (report, diff), :mod:`.explain`; :func:`main` here maps
the errors to exit codes.
"""

from __future__ import annotations

import os
import sys
import traceback

from ..errors import BadInputError, OutputWriteError, PluginError, SingAuditError
from ..progress import quiet_progress
from ..terminal import shorten
from .exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_PASSED,
    EXIT_POLICY_FAILED,
)
from .cache import cmd_cache
from .explain import cmd_explain
from .introspect import cmd_plugins, cmd_schema, cmd_validate
from .output import print_error, say, terminal_logging, warn
from .parser import build_parser
from .report import cmd_diff, cmd_report
from .run import cmd_merge, cmd_run, interrupted_message, log_hint, print_models

__all__ = [
    "main",
    "build_parser",
    "EXIT_PASSED",
    "EXIT_POLICY_FAILED",
    "EXIT_BAD_INPUT",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_BROKEN_PIPE",
]

COMMANDS = {
    "run": cmd_run,
    "merge": cmd_merge,
    "validate": cmd_validate,
    "schema": cmd_schema,
    "plugins": cmd_plugins,
    "report": cmd_report,
    "diff": cmd_diff,
    "explain": cmd_explain,
    "cache": cmd_cache,
}


def _command_word(argv: list[str]) -> str | None:
    """The command's name in ``argv`` (the first word that is not a flag), if any."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def plugin_commands(argv: list[str]) -> dict:
    """The commands plugins register (``register_commands``), loaded only when ``argv``
    does not name one of the core's: ``sing-audit run`` never imports a plugin to parse."""
    word = _command_word(argv)
    if word in COMMANDS or (word is None and "--version" in argv):
        return {}
    from ..host import create_registry

    registry = create_registry()
    commands = {}
    for name in registry.names("command"):
        reg = registry.get("command", name)
        if name in COMMANDS:
            raise PluginError(
                f"plugin {reg.plugin} ({reg.package}) registers a command named {name!r}, which is sing-audit's own; "
                "uninstall it, or leave it out with SING_AUDIT_LOAD_PLUGINS"
            )
        commands[name] = reg.factory()
    return commands


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        commands = plugin_commands(argv)
    except (BadInputError, PluginError) as exc:
        print_error("error", exc)
        return EXIT_BAD_INPUT
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    try:
        with terminal_logging(), quiet_progress(args.quiet):
            if args.command in commands:
                return commands[args.command].run(args)
            return COMMANDS[args.command](args)
    except KeyboardInterrupt as exc:
        warn(interrupted_message(args, exc))
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of our output went away (e.g. `| head`): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (BadInputError, PluginError) as exc:
        if args.debug:
            traceback.print_exc()
        print_error("error", exc)
        return EXIT_BAD_INPUT
    except OutputWriteError as exc:
        # the analysis finished: show its verdict and what is in place, then what failed
        print_models(exc.result)
        say(shorten(exc.result.verdict, 2000))
        if args.debug:
            traceback.print_exc()
        print_error("error", exc)
        if exc.is_bug:
            warn(f"{log_hint(args, exc)}A reporter failed with a bug (exit 70); report it with the log.")
            return EXIT_INTERNAL
        return EXIT_BAD_INPUT
    except SingAuditError as exc:
        if args.debug:
            traceback.print_exc()
        print_error("error", exc)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - a bug: never read as a verdict
        hint = log_hint(args, exc)
        traceback.print_exc() if args.debug else None
        warn(
            f"sing-audit: internal error (a bug, not a verdict): {exc.__class__.__name__}: {exc}\n"
            f"{hint}Rerun with --debug for the traceback, and report it with the log."
        )
        return EXIT_INTERNAL
