"""As in the core's tests/conftest.py: the cache shared across audits is off for every test,
so none reads or writes the developer's cache or shares one with another test."""

import pytest


@pytest.fixture(autouse=True)
def _no_shared_cache(monkeypatch):
    monkeypatch.setenv("SING_AUDIT_CACHE_DIR", "off")
    monkeypatch.delenv("SING_AUDIT_CACHE_MAX_SIZE", raising=False)
