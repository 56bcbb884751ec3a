"""Progress of the run's long stages, in one place.

On a terminal, a tqdm bar with its rate and the time left; anywhere else (a CI log, a
file) a plain line every :data:`PLAIN_EVERY_SECONDS` seconds, without carriage returns,
and none at all for a stage that ends sooner; under :func:`quiet_progress` nothing. The
CLI's ``--quiet`` sets the latter: progress goes, the verdict stays.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["progress", "quiet_progress", "progress_is_quiet", "PLAIN_EVERY_SECONDS"]

#: seconds between two plain progress lines (outside a terminal)
PLAIN_EVERY_SECONDS = 5.0

_QUIET: ContextVar[bool] = ContextVar("sing_audit_quiet_progress", default=False)


@contextmanager
def quiet_progress(quiet: bool = True):
    """No progress of any stage while inside (``quiet=False``: as usual)."""
    token = _QUIET.set(bool(quiet))
    try:
        yield
    finally:
        _QUIET.reset(token)


def progress_is_quiet() -> bool:
    """Whether progress is silenced here (for a component that draws its own bar)."""
    return _QUIET.get()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str = "it", stream=None):
    """A progress bar over ``iterable`` (or advanced by ``update(n)`` up to ``total``):
    iterate it or use it as a context manager; ``close()`` ends it. Written to ``stream``
    (default: stderr, looked up at call time)."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    stream = sys.stderr if stream is None else stream
    if _QUIET.get():
        return _Progress(iterable, total, desc, unit, None)
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=stream, dynamic_ncols=True)
    return _Progress(iterable, total, desc, unit, stream)


class _Progress:
    """Plain lines ``desc: n/total unit (rate unit/s, time left)`` every few seconds, and
    a last one when a stage that printed any ends; with no stream, nothing."""

    def __init__(self, iterable, total, desc, unit, stream) -> None:
        self.iterable, self.total, self.desc, self.unit, self.stream = iterable, total, desc, unit, stream
        self.n = 0
        self.started = self.last = time.monotonic()
        self.printed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.stream is not None and now - self.last >= PLAIN_EVERY_SECONDS:
            self.last = now
            self._line(now)

    def close(self) -> None:
        if self.stream is not None and self.printed:
            self.stream = self._line(time.monotonic(), done=True)

    def _line(self, now: float, done: bool = False):
        from tqdm import tqdm

        elapsed = max(now - self.started, 1e-9)
        rate = self.n / elapsed
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        if done:
            how = f"done in {tqdm.format_interval(elapsed)}"
        elif self.total and rate > 0:
            how = f"{rate:.3g} {self.unit}/s, {tqdm.format_interval((self.total - self.n) / rate)} left"
        else:
            how = f"{rate:.3g} {self.unit}/s"
        print(f"{self.desc}: {count} {self.unit} ({how})", file=self.stream, flush=True)
        self.printed = True
        return None if done else self.stream
