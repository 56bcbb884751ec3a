"""The run's cache: a content-keyed on-disk store of arrays with integrity checks.

Each entry is a folder ``<root>/<kind>/<key>/`` holding ``.npy`` arrays (memory-mappable)
and a ``meta.json`` written last with the sha256 of every array; an entry whose files do
not match their recorded digests is treated as missing (and recomputed, with a warning
naming the entry and what is wrong), never trusted.

Entries are content-keyed, so several runs (shards, audits sharing an output folder) may
write the same one at once: each writes a folder of its own under a unique hidden name
and renames it into place atomically. A valid entry that is already there holds the same
content and is kept (a reader may have it open); only a corrupt one is moved aside.

Large entries (extracted features) are written in chunks through a :class:`PartialEntry`:
rows go straight into memory-mapped ``.npy`` files in ``<root>/<kind>/.partial-<key>/``
and ``progress.json`` records, after each chunk is flushed, how many rows are complete.
A killed run resumes from the last complete chunk; the folder becomes the entry by one
rename once every row is written.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..store import atomic_write_text, current_umask, file_sha256, fsync_dir

__all__ = ["ArrayStore", "CorruptEntry", "PartialEntry"]

log = logging.getLogger("sing_audit")


class ArrayStore:
    """Entries of named arrays plus metadata under ``root``.

    ``before_write`` is called before anything is written (e.g. to claim the output
    folder once the run stores its first measurement)."""

    def __init__(self, root: Path, before_write=None):
        self.root = Path(root)
        self.before_write = before_write

    def _writing(self) -> None:
        if self.before_write is not None:
            self.before_write()

    def _dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def load(self, kind: str, key: str, mmap: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The entry's arrays and metadata, or ``None`` when missing or corrupt.

        A missing entry is silent; a corrupt one is logged as a warning naming the entry
        and the reason, since the caller will recompute it.
        """
        folder = self._dir(kind, key)
        if not folder.is_dir():
            return None
        try:
            return _read_entry(folder, mmap)
        except CorruptEntry as exc:
            log.warning("cache entry %s/%s is corrupt (%s); it will be recomputed", kind, key, exc)
            return None

    def remove(self, kind: str, key: str) -> None:
        """Delete an entry (missing is fine)."""
        shutil.rmtree(self._dir(kind, key), ignore_errors=True)

    def saved(self, kind: str, key: str) -> None:
        """Called once a complete entry is in place (written by this run or found there);
        the shared cache's :class:`~sing_audit.pipeline.shared_cache.LayeredStore` publishes it."""

    def save(self, kind: str, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> bool:
        """Write the entry into a temporary folder of its own, then rename it into place.

        Returns ``False`` when a valid entry was already there (or was written meanwhile by
        another run): keys are content keys, so it holds the same data and is kept.
        """
        self._writing()
        final = self._dir(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            digests = {name: _write_array(tmp / f"{name}.npy", arr) for name, arr in arrays.items()}
            atomic_write_text(tmp / "meta.json", json.dumps({"_arrays": digests, "meta": meta or {}}, default=str))
            os.chmod(tmp, 0o777 & ~current_umask())
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return _publish(tmp, final, f"{kind}/{key}")


class CorruptEntry(Exception):
    """An entry folder whose files do not make a valid entry; the message says why."""


def _read_entry(folder: Path, mmap: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read and verify the entry in ``folder``; raise :class:`CorruptEntry` saying what is wrong."""
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptEntry("meta.json is missing") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptEntry(f"meta.json is unreadable: {exc.__class__.__name__}: {exc}") from None
    listed = meta.get("_arrays") if isinstance(meta, dict) else None
    if not isinstance(listed, dict) or not all(isinstance(d, str) for d in listed.values()):
        raise CorruptEntry("meta.json does not list the arrays and their digests")
    arrays = {}
    for name, digest in listed.items():
        path = folder / f"{name}.npy"
        try:
            if file_sha256(path) != digest:
                raise CorruptEntry(f"digest mismatch in {path.name}")
            arrays[name] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            raise CorruptEntry(f"{path.name} is missing") from None
        except (OSError, ValueError, EOFError) as exc:
            raise CorruptEntry(f"{path.name} cannot be read: {exc.__class__.__name__}: {exc}") from None
    return arrays, meta.get("meta", {})


def _write_array(path: Path, arr: np.ndarray) -> str:
    """Save ``arr`` as ``.npy`` (no pickle), flushed to disk; return its sha256."""
    with open(path, "wb") as fh:
        np.save(fh, np.require(arr, requirements="C"), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    return file_sha256(path)


#: rounds of "rename into place, else check what is there" before giving up
_PUBLISH_ATTEMPTS = 20


def _publish(tmp: Path, final: Path, what: str) -> bool:
    """Rename the complete entry folder ``tmp`` to ``final`` atomically, unless a valid
    entry is already there; ``tmp`` is gone afterwards either way.

    ``os.rename`` of a folder fails when the target is a non-empty folder, so two writers
    never overwrite each other. When the rename fails the entry there is checked: a valid
    one is kept and ours dropped (returns ``False``); a corrupt one is moved aside under a
    unique name (readers with its files open are not disturbed) and the rename retried.
    """
    try:
        for _ in range(_PUBLISH_ATTEMPTS):
            try:
                os.rename(tmp, final)
            except OSError as exc:
                if not _target_exists_error(exc):
                    raise
            else:
                fsync_dir(final.parent)
                return True
            if not final.is_dir():  # moved aside by another writer meanwhile: try again
                continue
            try:
                _read_entry(final, mmap=True)
            except CorruptEntry as problem:
                log.info("cache entry %s is corrupt (%s); replacing it", what, problem)
                _move_aside(final)
                continue
            log.debug("cache entry %s was written meanwhile by another run; keeping it", what)
            return False
        raise OSError(f"could not write cache entry {what} into {final}: other writers kept replacing it")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _target_exists_error(exc: OSError) -> bool:
    """Whether a failed rename failed because the target folder exists (POSIX: not empty;
    Windows: exists at all)."""
    return isinstance(exc, FileExistsError) or exc.errno in (errno.ENOTEMPTY, errno.EEXIST)


def _move_aside(folder: Path) -> None:
    """Rename ``folder`` to a unique hidden name, then delete it (gone already is fine)."""
    aside = folder.with_name(f".{folder.name}.stale-{uuid.uuid4().hex[:12]}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


class PartialEntry:
    """An entry written row-chunk by row-chunk into memory-mapped files, resumable.

    ``fingerprint`` is everything the rows depend on besides the key (row count, batch
    size, dtype): a partial folder with another fingerprint is discarded, never mixed.
    """

    def __init__(self, store: ArrayStore, kind: str, key: str, n_rows: int, dtype: str, fingerprint: dict[str, Any]):
        self.store, self.kind, self.key = store, kind, key
        self.n_rows = int(n_rows)
        self.dtype = np.dtype(dtype)
        self.fingerprint = json.loads(json.dumps({**fingerprint, "n_rows": self.n_rows, "dtype": self.dtype.str}, default=str))
        self.folder = store._dir(kind, f".partial-{key}")
        self.values: np.ndarray | None = None
        self.ok: np.ndarray | None = None
        self.done = 0
        self._open_existing()

    @property
    def _progress_path(self) -> Path:
        return self.folder / "progress.json"

    def _open_existing(self) -> None:
        """Resume from the partial folder when it matches; otherwise discard it.

        No folder is a fresh start (silent); one with nothing committed yet is discarded
        with an info line; one with another fingerprint or broken files with a warning
        naming the entry and the reason, since its rows will be recomputed.
        """
        self.values = self.ok = None
        self.done = 0
        if not self.folder.is_dir():
            return
        if not self._progress_path.is_file():
            log.info("partial cache entry %s/%s has no committed rows; starting it over", self.kind, self.key)
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        try:
            self._resume()
        except CorruptEntry as exc:
            log.warning(
                "partial cache entry %s/%s (%s) is discarded (%s); its rows will be recomputed",
                self.kind, self.key, self.folder.name, exc,
            )
            shutil.rmtree(self.folder, ignore_errors=True)
            self.values = self.ok = None
            self.done = 0

    def _resume(self) -> None:
        """Open the committed rows of the partial folder; raise :class:`CorruptEntry` saying
        why they cannot be used."""
        try:
            progress = json.loads(self._progress_path.read_text(encoding="utf-8"))
            done = int(progress["done"])
            fingerprint = progress.get("fingerprint")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptEntry(f"progress.json is unreadable: {exc.__class__.__name__}: {exc}") from None
        if fingerprint != self.fingerprint:
            raise CorruptEntry("another fingerprint: it was written with other settings (rows, batch size, dtype or images)")
        if done > 0:
            arrays = {}
            for name in ("values", "ok"):
                try:
                    arrays[name] = np.load(self.folder / f"{name}.npy", mmap_mode="r+", allow_pickle=False)
                except (OSError, ValueError, EOFError) as exc:
                    raise CorruptEntry(f"{name}.npy cannot be read: {exc.__class__.__name__}: {exc}") from None
            values, ok = arrays["values"], arrays["ok"]
            if values.shape[:1] != (self.n_rows,) or ok.shape != (self.n_rows,) or values.dtype != self.dtype:
                raise CorruptEntry(
                    f"values.npy/ok.npy have shapes {values.shape}/{ok.shape} and dtype {values.dtype}, "
                    f"not {self.n_rows} rows of {self.dtype}"
                )
            self.values, self.ok = values, ok
        self.done = min(done, self.n_rows)

    def ensure(self, dim: int) -> None:
        """Create the memory-mapped arrays (N×dim values, N ok) on the first rows."""
        if self.values is not None:
            if self.values.shape[1:] != (dim,):
                raise ValueError(f"rows have {dim} columns but the partial entry holds {self.values.shape[1:]}")
            return
        self.store._writing()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.values = np.lib.format.open_memmap(self.folder / "values.npy", mode="w+", dtype=self.dtype, shape=(self.n_rows, dim))
        self.ok = np.lib.format.open_memmap(self.folder / "ok.npy", mode="w+", dtype=np.bool_, shape=(self.n_rows,))

    def write(self, rows, values: np.ndarray | None, bad=()) -> None:
        """Rows ``rows`` get ``values`` (ok); rows ``bad`` are marked not ok."""
        if values is not None and len(rows):
            self.ensure(values.shape[1])
            self.values[rows] = values
            self.ok[rows] = True
        if len(bad) and self.ok is not None:
            self.ok[list(bad)] = False
            self.values[list(bad)] = 0

    def commit(self, done: int) -> None:
        """Flush every row below ``done`` to disk, then record ``done`` (atomically)."""
        self.store._writing()
        if self.values is not None:
            self.values.flush()
            self.ok.flush()
            for name in ("values.npy", "ok.npy"):
                fd = os.open(self.folder / name, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.done = int(done)
        atomic_write_text(self._progress_path, json.dumps({"done": self.done, "fingerprint": self.fingerprint}))

    def finalize(self, arrays: dict[str, np.ndarray] | None = None, meta: dict[str, Any] | None = None) -> bool:
        """Add small arrays, record digests, and rename the folder into the entry.

        The partial folder is first claimed by renaming it to a unique name, so that two
        runs finalizing the same key never hash or rename one folder together. Returns
        ``False`` when a valid entry was already there (kept: it holds the same content).
        """
        if self.values is None:
            raise ValueError("no row was written")
        self.commit(self.n_rows)
        self.values = self.ok = None  # release the maps before renaming, hashing and publishing
        final = self.store._dir(self.kind, self.key)
        folder = self.folder.with_name(f".{self.key}.final-{uuid.uuid4().hex[:12]}")
        try:
            os.rename(self.folder, folder)
        except FileNotFoundError:
            if self.store.load(self.kind, self.key) is not None:
                return False  # another run finalized these rows first (the store shares it on load)
            raise
        try:
            for name, arr in (arrays or {}).items():
                _write_array(folder / f"{name}.npy", arr)
            digests = {path.stem: file_sha256(path) for path in sorted(folder.glob("*.npy"))}
            atomic_write_text(folder / "meta.json", json.dumps({"_arrays": digests, "meta": meta or {}}, default=str))
            os.chmod(folder, 0o777 & ~current_umask())
            (folder / "progress.json").unlink(missing_ok=True)
        except BaseException:
            self._unclaim(folder)
            raise
        published = _publish(folder, final, f"{self.kind}/{self.key}")
        self.store.saved(self.kind, self.key)
        return published

    def _unclaim(self, folder: Path) -> None:
        """Give a claimed folder back its partial name after a failed finalize, so that the
        complete rows resume rather than being extracted again (removed if that fails)."""
        try:
            os.rename(folder, self.folder)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
