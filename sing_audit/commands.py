"""Subcommands a plugin adds to ``sing-audit`` through the ``register_commands`` hook.

A command is what ``sing-audit NAME ...`` runs: its help line, its arguments (an
``argparse`` sub-parser it fills) and ``run(args) -> exit code``. The command line
looks a plugin's command up only when the command word is not one of the core's, so
``sing-audit run`` never loads plugins to parse its arguments.

    from sing_audit import hookimpl
    from sing_audit.commands import Command

    class Hello(Command):
        help = "say hello to a run folder"

        def add_arguments(self, parser):
            parser.add_argument("run_dir")

        def run(self, args) -> int:
            print(f"hello {args.run_dir}")
            return 0

    @hookimpl
    def register_commands(register):
        register("hello", Hello)

Errors follow the core's exit codes: raise a :class:`~sing_audit.errors.BadInputError`
for the user's mistake (exit 2, the message printed), return 1 for a negative answer
(a check that does not hold), 0 otherwise.
"""

from __future__ import annotations

import abc
import argparse
from typing import ClassVar

__all__ = ["Command"]


class Command(abc.ABC):
    """One ``sing-audit`` subcommand."""

    #: one line for ``sing-audit --help``
    help: ClassVar[str] = ""
    #: the paragraph ``sing-audit NAME --help`` shows (default: ``help``)
    description: ClassVar[str] = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments to its own sub-parser."""

    @abc.abstractmethod
    def run(self, args: argparse.Namespace) -> int:
        """Do the work; return the exit code."""
