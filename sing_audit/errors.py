"""Exceptions raised by sing-audit.

The tree, and the exit code ``sing-audit run`` maps each branch to::

    SingAuditError                 base of everything sing-audit raises on purpose
    ├── BadInputError              exit 2: the user's config, data or weights are wrong
    │   ├── ConfigError            audit.yaml does not validate (file, field path, choices)
    │   ├── DataError              missing/corrupt images, NaN features, empty classes,
    │   │                          misaligned arrays, dimension mismatches
    │   ├── WeightsError           weights that cannot be found, read or trusted
    │   ├── HeadError              a head that is not a plain affine map
    │   └── OutputFolderError      the output folder holds another audit
    └── PluginError                exit 2: a plugin failed to import, or two plugins
                                   register the same name

Anything else that escapes the runner is a bug: exit 70 with the log's location.
A failed policy is not an exception; ``run`` returns a result with ``passed = False``.
"""

from __future__ import annotations

__all__ = [
    "SingAuditError",
    "BadInputError",
    "ConfigError",
    "DataError",
    "WeightsError",
    "HeadError",
    "OutputFolderError",
    "PluginError",
    "exception_summary",
]


class SingAuditError(Exception):
    """Base class of every error sing-audit raises on purpose."""


class BadInputError(SingAuditError):
    """The user's input (config, data, weights) is wrong; the message says how to fix it."""


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


def exception_summary(exc: BaseException) -> str:
    """``"ClassName: first line of the message"`` (at most 300 characters of it), for
    error messages that wrap a library's exception."""
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0][:300]}" if text else exc.__class__.__name__
