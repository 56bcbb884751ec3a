"""What a model library knows (its model names, pretrained tags, a model's pretrained
config), remembered per installed version of the library, so that checking a config
does not import the library.

``sing-audit validate`` and the plan of every run check model names against the
library's own lists (with close matches for a typo). Importing timm to ask costs
seconds (it imports torch and torchvision); the answer changes only when the installed
version does. :func:`library_value` asks the library once per version and keeps the
answer as a small JSON file:

- where: ``SING_AUDIT_CACHE_DIR``/``names`` when that variable names a folder, nowhere
  when it is ``off``, ``0``, ``false`` or ``none`` (then the library is asked every time,
  as before), else ``names`` in the user's cache folder (``platformdirs``);
- keyed by the distribution's installed version (``importlib.metadata``, no import): a
  file written for another version, or one that cannot be read or parsed, is ignored
  and written again;
- written atomically (:func:`~sing_audit.store.atomic_write_text`), so concurrent runs
  read a whole file or none; a file that cannot be written is not an error (the answer
  is still returned, the next run asks the library again).

When the library is already imported in this process (a user's script that registered a
model of its own, or a run that loaded a model), the library is asked directly, since the
file could not know what was added at run time; a missing or stale file is then written
from that answer (the first ``validate`` imports the library once and writes every list
it asked for); a valid file is never overwritten from a live answer. A model registered
at run time before the first file of a version is written can so reach the file: a later
process then accepts its name in the pre-flight, and the library itself refuses it when
the model is built, with its own error.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from .cache_setting import CACHE_DIR_ENV, NAMES_DIR, OFF_WORDS, claim_folder, folder_from_environment
from .store import atomic_write_text, slug

__all__ = ["CACHE_DIR_ENV", "OFF_WORDS", "library_value", "names_dir"]

log = logging.getLogger("sing_audit")

#: the layout of a file; a file of another format is rebuilt
FORMAT = 1


def names_dir() -> Path | None:
    """The folder of the name lists, or ``None`` when the cache is off (see the module docs).
    It is the ``names`` subfolder of the machine-wide cache's folder, which the first writer
    tags as sing-audit's (:func:`~sing_audit.cache_setting.claim_folder`); in a folder that
    holds someone else's files nothing is written."""
    folder, _ = folder_from_environment()
    return None if folder is None else folder / NAMES_DIR


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def library_value(
    distribution: str,
    what: str,
    build: Callable[[], Any],
    *,
    module: str | None = None,
    valid: Callable[[Any], bool] | None = None,
) -> Any:
    """``build()`` (which asks the library), remembered per installed version of ``distribution``.

    ``what`` names the answer (e.g. ``"models"``, ``"pretrained_cfg/resnet50"``); the answer
    must be plain JSON data and is returned as JSON gives it back (lists for tuples), on the
    first call as on later ones. ``module``: the library's import name; when it is already
    imported the library is asked directly. ``valid``: a check of a stored answer's shape; a
    stored answer that fails it is treated as a corrupt file. A ``build()`` that raises
    raises here, and nothing is stored.
    """
    imported = module is not None and module in sys.modules
    folder = names_dir()
    version = _installed_version(distribution)
    if folder is None or version is None:  # cache off, or not installed: build() says what is wrong
        return _round_trip(build())
    path = folder / slug(distribution) / f"{slug(what)}.json"
    stored = _read(path, distribution, version, what)
    if stored is not None and valid is not None and not valid(stored[0]):
        stored = None
    if stored is not None and not imported:
        return stored[0]
    value = _round_trip(build())
    if stored is not None:  # a valid file of this version stands: the live answer may hold run-time additions
        return value
    record = {"format": FORMAT, "distribution": distribution, "version": version, "what": what, "value": value}
    try:
        if not claim_folder(folder.parent):
            log.debug("name list %s not written: %s holds files that are not sing-audit's", path, folder.parent)
            return value
        atomic_write_text(path, json.dumps(record, separators=(",", ":")))
    except OSError as exc:  # a read-only cache folder: the answer stands, it is not kept
        log.debug("name list %s not written: %s", path, exc)
    return value


def _read(path: Path, distribution: str, version: str, what: str) -> tuple[Any] | None:
    """``(value,)`` of a stored answer for this version, else ``None`` (missing, unreadable,
    corrupt, or written for another version or format)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or "value" not in record:
        return None
    expected = {"format": FORMAT, "distribution": distribution, "version": version, "what": what}
    if any(record.get(k) != v for k, v in expected.items()):
        return None
    return (record["value"],)


def _round_trip(value: Any) -> Any:
    """``value`` as JSON gives it back, so a fresh answer equals a stored one (anything JSON has
    no type for as its ``str``, as :func:`~sing_audit.store.jsonable` writes it into ``describe()``)."""
    return json.loads(json.dumps(value, default=str))
