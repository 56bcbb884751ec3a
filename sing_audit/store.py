"""A content-keyed on-disk store with atomic writes and integrity checks.

Each entry is a folder ``<root>/<kind>/<key>/`` holding ``.npy`` arrays (memory-mappable)
and a ``meta.json`` written last with the sha256 of every array; an entry whose files do
not match their recorded digests is treated as missing (and recomputed), never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["content_key", "atomic_write_text", "atomic_write_bytes", "ArrayStore", "safe_child"]


def content_key(*parts: Any) -> str:
    """A stable sha256 of JSON-serialisable parts (dict keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _fsync_dir(path: Path) -> None:
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def safe_child(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that would land outside ``root``."""
    root = Path(root).resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise ValueError(f"path {relative!r} escapes the output folder {root}")
    return candidate


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ArrayStore:
    """Entries of named arrays plus metadata under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def load(self, kind: str, key: str, mmap: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The entry's arrays and metadata, or ``None`` when missing or corrupt."""
        folder = self._dir(kind, key)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            arrays = {}
            for name, digest in meta["_arrays"].items():
                path = folder / f"{name}.npy"
                if _file_sha256(path) != digest:
                    return None
                arrays[name] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, json.JSONDecodeError):
            return None
        return arrays, meta.get("meta", {})

    def save(self, kind: str, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> None:
        """Write the entry atomically: arrays into a temporary folder, then rename."""
        final = self._dir(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            digests = {}
            for name, arr in arrays.items():
                path = tmp / f"{name}.npy"
                with open(path, "wb") as fh:
                    np.save(fh, np.require(arr, requirements="C"), allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
                digests[name] = _file_sha256(path)
            atomic_write_text(tmp / "meta.json", json.dumps({"_arrays": digests, "meta": meta or {}}, default=str))
            os.chmod(tmp, 0o777 & ~_umask())
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
