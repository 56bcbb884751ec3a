"""As in the core's tests/conftest.py: the cache shared across audits is off for the whole
session (before module-scoped fixtures run audits, and in child processes) and again for
every test, so none reads or writes the developer's cache or shares one with another test."""

import os

import pytest


def pytest_configure(config):
    os.environ["SING_AUDIT_CACHE_DIR"] = "off"
    os.environ.pop("SING_AUDIT_CACHE_MAX_SIZE", None)


@pytest.fixture(autouse=True)
def _no_shared_cache(monkeypatch):
    monkeypatch.setenv("SING_AUDIT_CACHE_DIR", "off")
    monkeypatch.delenv("SING_AUDIT_CACHE_MAX_SIZE", raising=False)
