"""sing-audit: audit image classifiers for meaning hidden in their head's null space."""

from __future__ import annotations

from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["hookimpl", "run", "AuditResult", "__version__"]


def run(config, *, force: bool = False, overrides=None):
    """Run an audit from a config (an ``AuditConfig``, a dict, or a path to audit.yaml).

    Returns the :class:`~sing_audit.results.AuditResult`; raises
    :class:`~sing_audit.errors.BadInputError` on bad input.
    """
    from .pipeline import run_audit

    return run_audit(config, force=force, overrides=overrides)


def __getattr__(name):
    if name == "AuditResult":
        from .results import AuditResult

        return AuditResult
    raise AttributeError(f"module 'sing_audit' has no attribute {name!r}")
