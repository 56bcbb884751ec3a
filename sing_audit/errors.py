"""Exceptions raised by sing-audit.

The tree, and the exit code ``sing-audit run`` maps each branch to::

    SingAuditError                 base of everything sing-audit raises on purpose
    ├── BadInputError              exit 2: the user's config, data or weights are wrong
    │   ├── ConfigError            audit.yaml does not validate (file, field path, choices)
    │   ├── DataError              missing/corrupt images, NaN features, empty classes,
    │   │                          misaligned arrays, dimension mismatches
    │   ├── WeightsError           weights that cannot be found, read or trusted
    │   ├── HeadError              a head that is not a plain affine map
    │   └── OutputFolderError      the output folder holds another audit, or another
    │                              run holds it right now
    ├── PluginError                exit 2: a plugin failed to import, or two plugins
    │                              register the same name
    └── OutputWriteError           the audit finished, results.json is written, but another
                                   output (HTML, PDF, a third-party reporter) failed: exit 2,
                                   or 70 when the failure is a bug; carries the result

Anything else that escapes the runner is a bug: exit 70 with the log's location.
A failed policy is not an exception; ``run`` returns a result with ``passed = False``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "SingAuditError",
    "BadInputError",
    "ConfigError",
    "DataError",
    "WeightsError",
    "HeadError",
    "OutputFolderError",
    "PluginError",
    "OutputWriteError",
    "WriterFailure",
    "exception_summary",
    "at_field",
]


class SingAuditError(Exception):
    """Base class of every error sing-audit raises on purpose."""


class BadInputError(SingAuditError):
    """The user's input (config, data, weights) is wrong; the message says how to fix it.

    ``field``: the option of the component that is wrong (``"root"``, ``"model"``), when the
    raiser knows it; the host then names the config field (``audit.yaml: dataset.root: ...``)."""

    def __init__(self, *args: object, field: str | None = None) -> None:
        super().__init__(*args)
        self.field = field


class ConfigError(BadInputError):
    """The audit config does not validate."""


class DataError(BadInputError):
    """Images, labels, features or embeddings are missing, corrupt or inconsistent."""


class WeightsError(BadInputError):
    """Weights cannot be resolved, read, or were not asked for explicitly."""


class HeadError(BadInputError):
    """The classifier head is not a plain affine map, so it has no meaningful null space."""


class OutputFolderError(BadInputError):
    """The output folder already holds a different audit."""


class PluginError(SingAuditError):
    """A plugin failed to import or registered a name that is already taken."""


@dataclass(frozen=True)
class WriterFailure:
    """One output that could not be written: its format, the reporter and why."""

    format: str
    reporter: str
    package: str
    error: BaseException

    @property
    def is_bug(self) -> bool:
        """A failure sing-audit (or the reporter) did not raise on purpose."""
        return not isinstance(self.error, SingAuditError)


class OutputWriteError(SingAuditError):
    """The audit finished and results.json is in place, but some outputs failed.

    ``result`` is the audit's result (its verdict stands), ``failures`` the outputs that
    failed, ``written`` every file that is in place (relative to ``output``)."""

    def __init__(self, result, failures: list[WriterFailure], output, written: list[str]):
        self.result = result
        self.failures = list(failures)
        self.output = output
        self.written = list(written)
        formats = ",".join(f.format for f in self.failures)
        lines = [
            f"the audit finished (its verdict stands), but {len(self.failures)} output(s) could not be written:"
        ]
        for f in self.failures:
            kind = "a bug in the reporter" if f.is_bug else "the reporter says"
            lines.append(f"  {f.format} (reporter {f.reporter!r} from {f.package}; {kind}): {exception_summary(f.error)}")
        lines.append(
            f"results.json and the other outputs ({', '.join(p for p in self.written if p != 'results.json') or 'none'}) "
            f"are complete and in place in {output}."
        )
        lines.append(f"Once the cause is fixed, regenerate what failed with: sing-audit report {output} --format {formats}")
        super().__init__("\n".join(lines))

    @property
    def is_bug(self) -> bool:
        return any(f.is_bug for f in self.failures)


def exception_summary(exc: BaseException) -> str:
    """``"ClassName: first line of the message"`` (at most 300 characters of it), for
    error messages that wrap a library's exception."""
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0][:300]}" if text else exc.__class__.__name__


@contextmanager
def at_field(field: str) -> Iterator[None]:
    """Within the block, a :class:`BadInputError` that names no field is about ``field``
    (a component's option), so the host's message names the config field."""
    try:
        yield
    except BadInputError as exc:
        if exc.field is None:
            exc.field = field
        raise
