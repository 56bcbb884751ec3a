"""As in the core's tests/conftest.py: the cache shared across audits is off for the whole
session and for every test (:mod:`sing_audit.testing.shared_cache_off`)."""

from sing_audit.testing.shared_cache_off import no_shared_cache, pytest_configure  # noqa: F401
