"""Content keys, JSON-safe values, safe file names (:func:`slug`) and safe file writes:
atomic (through a temporary file and a rename) and confined to the output folder
(:func:`safe_child`). Used by the run and by plugins alike; the run's array cache is
:mod:`sing_audit.pipeline.cache`."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["SLUG_MAX", "atomic_write_bytes", "atomic_write_text", "content_key", "current_umask", "fsync_dir",
           "jsonable", "safe_child", "slug"]


def content_key(*parts: Any) -> str:
    """A stable sha256 of JSON-serialisable parts (dict keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB chunks; ``OSError`` when it
    cannot be read (callers say which error that is for them)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk (where the platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's file-creation mask."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def jsonable(value: Any, fallback=str) -> Any:
    """``value`` as plain JSON data (dict keys as strings, tuples as lists, paths as
    strings; anything else through ``fallback``), e.g. for a plugin's ``describe()``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, fallback) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, fallback) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return fallback(value)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    The file gets the permissions a plain ``open()`` would give (0666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


#: longest path component :func:`slug` makes (far below the 255 bytes file systems allow)
SLUG_MAX = 64


def slug(text: str) -> str:
    """``text`` as one short, safe path component, distinct for distinct texts.

    ASCII letters, digits and ``._-`` are kept, anything else becomes ``_``. A text that
    is kept whole (at most :data:`SLUG_MAX` characters, nothing replaced, no capital that a
    case-insensitive file system would fold) is its own slug; any other gets a short
    SHA-256 of the full text appended, so two names never share a folder.
    """
    clean = "".join(c if (c.isascii() and c.isalnum()) or c in "._-" else "_" for c in text)
    if clean == text and text.lower() == text and 0 < len(text) <= SLUG_MAX and text.strip(".") != "":
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{clean[: SLUG_MAX - len(digest) - 1]}-{digest}"


def safe_child(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that would land outside ``root``."""
    root = Path(root).resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise ValueError(f"path {relative!r} escapes the output folder {root}")
    return candidate
