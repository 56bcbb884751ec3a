"""Test suites of sing-audit and its plugin families run with the cache shared across
audits off: for the whole session (before module- and session-scoped fixtures run audits,
and in every child process) and again for each test, whatever the one before did to the
environment. No test reads or writes the developer's cache, nor shares one with another.

A suite's root ``conftest.py`` takes both::

    from sing_audit.testing.shared_cache_off import no_shared_cache, pytest_configure  # noqa: F401

(a suite with a ``pytest_configure`` of its own calls :func:`shared_cache_off` in it).
Tests of the shared cache point ``SING_AUDIT_CACHE_DIR`` to a folder of their own.
"""

from __future__ import annotations

import os

import pytest

from ..cache_setting import CACHE_DIR_ENV, CACHE_MAX_SIZE_ENV

__all__ = ["no_shared_cache", "pytest_configure", "shared_cache_off"]


def shared_cache_off() -> None:
    """Turn the shared cache off in this process's environment (children inherit it)."""
    os.environ[CACHE_DIR_ENV] = "off"
    os.environ.pop(CACHE_MAX_SIZE_ENV, None)


def pytest_configure(config) -> None:
    shared_cache_off()


@pytest.fixture(autouse=True)
def no_shared_cache(monkeypatch):
    """Off again for each test."""
    monkeypatch.setenv(CACHE_DIR_ENV, "off")
    monkeypatch.delenv(CACHE_MAX_SIZE_ENV, raising=False)
