"""Optional libraries behind the package's extras (``pip install 'sing-audit[mlflow]'``).

An integration imports its library through :func:`require` where it is first needed
(never at module import), so a missing library is a clear error with the extra to
install — exit 2 before anything runs — and the rest of sing-audit works without it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType

from .errors import BadInputError

__all__ = ["MissingExtraError", "environment", "install_hint", "require"]


class MissingExtraError(BadInputError):
    """An optional library an integration needs is not installed (exit 2)."""

    def __init__(self, message: str, *, extra: str, module: str) -> None:
        super().__init__(message)
        self.extra = extra
        self.module = module


def install_hint(extra: str) -> str:
    """The command that installs an extra into this environment."""
    return f"pip install 'sing-audit[{extra}]'"


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``extra``.

    :param feature: what needs it, for the message (``"the mlflow reporter"``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{feature} needs the {module.split('.')[0]} package, which cannot be imported ({exc}); "
            f"install the {extra!r} extra: {install_hint(extra)}",
            extra=extra,
            module=module,
        ) from exc


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set while the block runs, for a library configured
    only through environment variables; every variable is put back (or removed) after."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
