"""The cache shared across audits: a machine-wide second tier behind each run's folder cache.

A run's own store (``<output>/cache``, :class:`~sing_audit.pipeline.cache.ArrayStore`)
stays self-contained: resumable partial entries, shard entries and their merge live there
alone. The shared cache holds *complete* entries only (features, embeddings, text, text
chunks, subspaces), under the same ``<kind>/<key>/`` layout, content-keyed, so any audit
of the same model on the same data finds them:

- a folder miss looks here; a hit is hard-linked (same inode, no extra disk; a copy when
  the two folders are on different file systems or links are refused) into a temporary
  folder of the run's cache, *verified there* (every digest), then renamed into place.
  Linking first and verifying the links means an entry that pruning removes meanwhile is
  either complete in our links (its inodes live on) or a plain miss: never half an entry;
- every complete entry the run stores (or reads from its folder) is published here the same
  way: linked into a temporary name, renamed into place atomically;
- an entry whose digests do not match is a miss with a warning, and is moved aside here,
  never trusted;
- partial entries (the rows of an unfinished extraction) and per-shard entries are not
  shared: they belong to one run's resumable state and are fingerprinted by its batch size
  and images; the merged entry a shard set becomes is shared like any other.

The size is bounded (:data:`DEFAULT_MAX_SIZE`, ``run.cache_max_size``,
``SING_AUDIT_CACHE_MAX_SIZE``): after each write the least recently *used* entries are
removed until the apparent size of the files fits (an entry's use is the mtime of its
``.used`` file, set at every hit: atime is unreliable under relatime/noatime). Pruning and
its size accounting run under a :class:`filelock.FileLock` (``<root>/.lock``); reads take
no lock. Removal renames an entry aside before deleting it, so a reader sees all of it or
nothing.

Where it is and its bound: :mod:`sing_audit.cache_setting`. The folder carries a
``CACHEDIR.TAG`` (backup tools skip it): a non-empty folder without sing-audit's tag is
never used, pruned or cleared, nor is a folder inside an output folder (or holding the
run's output folder). A problem with a ``run.cache_dir`` the config names is a config
error; with the environment's or the default folder it is a warning and the run goes on
without the shared tier (it is an optimisation).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..store import atomic_write_text, current_umask
from .cache import ArrayStore, CorruptEntry, _move_aside, _publish, _read_entry
from ..cache_setting import (NAMES_DIR, TAG_NAME, TAG_TEXT, CACHE_DIR_ENV, CACHE_MAX_SIZE_ENV, DEFAULT_MAX_SIZE, CacheSetting,  # noqa: F401 - re-exported
                            cache_setting, is_tagged, parse_size, setting_of)
from .run_folder import MARKER, STATE_DIR

__all__ = ["CACHE_DIR_ENV", "CACHE_MAX_SIZE_ENV", "DEFAULT_MAX_SIZE", "CacheSetting", "LayeredStore", "SharedCache",
           "SharedEntry", "cache_setting", "open_shared_cache", "parse_size", "setting_of", "shareable"]

log = logging.getLogger("sing_audit")

#: the file whose mtime records an entry's last use
USED_NAME = ".used"
LOCK_NAME = ".lock"
#: seconds a lock on pruning is waited for before a writer skips pruning (another process prunes)
LOCK_TIMEOUT_S = 60.0
#: hidden temporary folders older than this are leftovers of killed processes (pruned)
STALE_TEMP_S = 24 * 3600.0


def shareable(kind: str) -> bool:
    """Whether entries of ``kind`` go to the shared cache: every kind but per-shard entries
    (one run's slices, merged into a shared entry)."""
    return not kind.endswith("-shards")


# --------------------------------------------------------------------------- opening


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _output_folder_around(path: Path) -> Path | None:
    """The nearest folder at or above ``path`` that is an audit's output folder."""
    for p in (path, *path.parents):
        if (p / STATE_DIR).is_dir() or ((p / MARKER).is_file() and (p / "cache").is_dir()):
            return p
    return None


def open_shared_cache(setting: CacheSetting, output_dir: Path | None = None, create: bool = True) -> "SharedCache":
    """The shared cache of ``setting`` (enabled), checked for use beside the output folder
    ``output_dir``; created (with its tag) when ``create``. Raises :class:`ConfigError`
    saying what is wrong and what to do."""
    root = setting.path.resolve()
    fix = f"set run.cache_dir (or {CACHE_DIR_ENV}) to another folder, or to false / off"
    if root.exists() and not root.is_dir():
        raise ConfigError(f"shared cache {root} ({setting.why()}) is not a folder; {fix}")
    if output_dir is not None:
        out = Path(output_dir).resolve()
        if _inside(root, out):
            raise ConfigError(f"shared cache {root} ({setting.why()}) lies inside the output folder {out}; {fix}")
        if _inside(out, root):
            raise ConfigError(f"the output folder {out} lies inside the shared cache {root} ({setting.why()}); "
                              f"choose another output, or {fix}")
    around = _output_folder_around(root)
    if around is not None:
        raise ConfigError(f"shared cache {root} ({setting.why()}) lies inside the audit output folder {around}; {fix}")
    cache = SharedCache(root, setting.max_size)
    if create:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the shared cache {root} ({setting.why()}): {exc.strerror or exc}; {fix}") from None
    if root.is_dir():
        cache.check_ours(create=create)
    return cache


# --------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class SharedEntry:
    kind: str
    key: str
    path: Path
    size: int
    used: float


def _link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` as ``dst``, else copy it; ``True`` when linked. Links are refused
    across file systems (EXDEV), by some file systems and by protected_hardlinks (EPERM)."""
    try:
        os.link(src, dst)  # src is a regular file (symlinks are never listed)
        return True
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP,
                             errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    shutil.copyfile(src, dst, follow_symlinks=False)
    return False


def _entry_files(folder: Path) -> list[str]:
    """The names of an entry's files: regular files (never symlinks), not hidden."""
    names = []
    with os.scandir(folder) as it:
        for e in it:
            if not e.name.startswith(".") and e.is_file(follow_symlinks=False):
                names.append(e.name)
    return sorted(names)


class SharedCache:
    """The shared tier at ``root`` with a size bound of ``max_size`` bytes."""

    def __init__(self, root: Path, max_size: int):
        self.root = Path(root)
        self.max_size = int(max_size)

    def check_ours(self, create: bool = True) -> None:
        """Refuse a folder that holds files but is not sing-audit's cache (its tag);
        write the tag into an empty one."""
        try:
            if is_tagged(self.root):
                return
        except OSError as exc:
            raise ConfigError(f"shared cache {self.root}: cannot read {TAG_NAME}: {exc}") from None
        if any(self.root.iterdir()):
            raise ConfigError(
                f"shared cache {self.root} holds files and is not a sing-audit cache (no {TAG_NAME} written by "
                f"sing-audit); point run.cache_dir or {CACHE_DIR_ENV} to an empty or new folder"
            )
        if create:
            try:
                atomic_write_text(self.root / TAG_NAME, TAG_TEXT)
            except OSError as exc:
                raise ConfigError(f"shared cache {self.root} is not writable: {exc.strerror or exc}") from None

    def _dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def _lock(self, timeout: float = LOCK_TIMEOUT_S):
        from filelock import FileLock

        return FileLock(str(self.root / LOCK_NAME), timeout=timeout)

    # ----------------------------------------------------------------- use

    @staticmethod
    def _touch(folder: Path) -> None:
        """Record a use of the entry ``folder`` (its ``.used`` file's mtime)."""
        used = folder / USED_NAME
        try:
            if not used.is_symlink():
                used.touch()  # creates it, or sets its mtime to now
        except OSError:
            pass  # a read-only cache: the entry still serves

    def has(self, kind: str, key: str) -> bool:
        folder = self._dir(kind, key)
        return folder.is_dir() and not folder.is_symlink()

    def copy_out(self, kind: str, key: str, parent: Path) -> Path | None:
        """The entry linked (or copied) into a new hidden folder under ``parent`` and
        verified there, or ``None`` when it is missing, vanished meanwhile or corrupt (moved
        aside, with a warning). The caller publishes or removes the folder."""
        src = self._dir(kind, key)
        if not self.has(kind, key):
            return None
        self._touch(src)  # first: the most recently used entry is the last one pruning takes
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.shared-", dir=parent))
        try:
            for name in _entry_files(src):
                _link_or_copy(src / name, tmp / name)
        except FileNotFoundError:  # pruned while we linked: a miss
            shutil.rmtree(tmp, ignore_errors=True)
            return None
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            log.warning("shared cache entry %s/%s in %s cannot be read (%s); it will be computed", kind, key, self.root, exc)
            return None
        try:
            _read_entry(tmp, mmap=True)
        except CorruptEntry as problem:
            shutil.rmtree(tmp, ignore_errors=True)
            if not src.is_dir():
                return None  # pruned meanwhile (a link failed before the check could tell)
            log.warning("shared cache entry %s/%s in %s is corrupt (%s); it is removed and will be recomputed",
                        kind, key, self.root, problem)
            _move_aside(src)
            return None
        os.chmod(tmp, 0o777 & ~current_umask())
        return tmp

    def publish(self, kind: str, key: str, entry: Path) -> bool:
        """Add the complete, verified entry folder ``entry`` as ``kind/key`` (linked, else
        copied, then renamed into place), then prune to the bound. ``False`` when it was
        there already (its use recorded) or is larger than the bound. Errors (a full disk)
        are the caller's to report."""
        final = self._dir(kind, key)
        if self.has(kind, key):
            self._touch(final)
            return False
        names = [n for n in _entry_files(entry) if n != "progress.json"]
        size = sum((entry / n).stat().st_size for n in names)
        if size > self.max_size:
            log.info("cache entry %s/%s (%d bytes) is larger than the shared cache's bound (%d bytes); not shared",
                     kind, key, size, self.max_size)
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            for name in names:
                _link_or_copy(entry / name, tmp / name)
            (tmp / USED_NAME).touch()
            os.chmod(tmp, 0o777 & ~current_umask())
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        added = _publish(tmp, final, f"{kind}/{key} of the shared cache {self.root}")
        if added:
            self.prune(wait=LOCK_TIMEOUT_S)
        return added

    def remove(self, kind: str, key: str) -> None:
        """Remove an entry (moved aside first: a reader has all of it or nothing)."""
        if self.has(kind, key):
            _move_aside(self._dir(kind, key))

    # ----------------------------------------------------------------- size

    def entries(self) -> list[SharedEntry]:
        """Every complete entry, least recently used first. Only real folders are read:
        symlinks are never followed, hidden temporary folders and output folders skipped."""
        found = []
        if not self.root.is_dir():
            return found
        for kind_dir in _subfolders(self.root, skip=(NAMES_DIR,)):
            for entry in _subfolders(kind_dir):
                try:
                    size = sum((entry / n).stat().st_size for n in _entry_files(entry))
                    used = entry / USED_NAME
                    stamp = used.stat().st_mtime if used.is_file() and not used.is_symlink() else entry.stat().st_mtime
                except FileNotFoundError:
                    continue  # removed meanwhile
                found.append(SharedEntry(kind_dir.name, entry.name, entry, size, stamp))
        return sorted(found, key=lambda e: (e.used, e.kind, e.key))

    def prune(self, max_size: int | None = None, wait: float = -1) -> list[SharedEntry]:
        """Remove least recently used entries until the total fits ``max_size`` (default:
        the bound), and temporary folders left by killed processes; the removed entries.
        ``wait``: seconds to wait for another process's pruning (``-1``: as long as it takes);
        when it runs out, nothing is pruned (that process is pruning)."""
        from filelock import Timeout

        bound = self.max_size if max_size is None else int(max_size)
        try:
            with self._lock(timeout=wait):
                entries = self.entries()
                total = sum(e.size for e in entries)
                removed = []
                for entry in entries:
                    if total <= bound:
                        break
                    _move_aside(entry.path)
                    removed.append(entry)
                    total -= entry.size
                self._remove_stale_temps()
        except Timeout:
            log.info("shared cache %s: another process is pruning it; not pruning now", self.root)
            return []
        for entry in removed:
            log.info("shared cache %s: pruned %s/%s (%d bytes, last used %s)", self.root, entry.kind, entry.key,
                     entry.size, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.used)))
        return removed

    def _remove_stale_temps(self) -> None:
        now = time.time()
        for kind_dir in _subfolders(self.root, skip=(NAMES_DIR,)):
            with os.scandir(kind_dir) as it:
                for e in it:
                    if e.name.startswith(".") and e.is_dir(follow_symlinks=False):
                        try:
                            if now - e.stat(follow_symlinks=False).st_mtime > STALE_TEMP_S:
                                shutil.rmtree(e.path, ignore_errors=True)
                        except FileNotFoundError:
                            pass

    def clear(self) -> list[SharedEntry]:
        """Remove every entry, temporary folder and the name lists (under the pruning lock);
        the entries removed. Symlinks are never followed, output folders left alone."""
        with self._lock(timeout=-1):
            entries = self.entries()
            for entry in entries:
                _move_aside(entry.path)
            for kind_dir in _subfolders(self.root, skip=(NAMES_DIR,)):
                with os.scandir(kind_dir) as it:
                    hidden = [Path(e.path) for e in it if e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
                for folder in hidden:
                    shutil.rmtree(folder, ignore_errors=True)
                try:
                    kind_dir.rmdir()
                except OSError:
                    pass  # holds something that is not an entry: left alone
            names = self.root / NAMES_DIR
            if names.is_dir() and not names.is_symlink():
                shutil.rmtree(names, ignore_errors=True)  # the name lists: rebuilt on first use
        return entries


def _subfolders(folder: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """The real, non-hidden subfolders of ``folder`` that are not output folders, nor named in ``skip``."""
    out = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
                    continue
                if e.name in skip:
                    continue
                p = Path(e.path)
                if (p / STATE_DIR).exists() or (p / MARKER).exists():
                    continue  # an audit's output folder: never an entry
                out.append(p)
    except FileNotFoundError:
        pass
    return sorted(out)


# --------------------------------------------------------------------------- the layered store


class LayeredStore(ArrayStore):
    """A run's folder store with the shared cache behind it (see the module's docstring).

    ``from_shared``: the entries this run took from the shared cache (``kind/key``)."""

    def __init__(self, root: Path, shared: SharedCache, before_write=None):
        super().__init__(root, before_write)
        self.shared = shared
        self.from_shared: list[str] = []

    def load(self, kind: str, key: str, mmap: bool = True) -> tuple[dict[str, Any], dict[str, Any]] | None:
        hit = super().load(kind, key, mmap)
        if not shareable(kind):
            return hit
        if hit is not None:
            self.share(kind, key)  # a folder from before (or a failed publish): share it now
            return hit
        if not self._bring(kind, key):
            return None
        return super().load(kind, key, mmap)

    def _bring(self, kind: str, key: str) -> bool:
        if not self.shared.has(kind, key):
            return False
        self._writing()  # only now: a miss must leave the output folder unclaimed
        final = self._dir(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.shared.copy_out(kind, key, final.parent)
        if tmp is None:
            return False
        _publish(tmp, final, f"{kind}/{key}")
        self.from_shared.append(f"{kind}/{key}")
        log.info("cache entry %s/%s from the shared cache %s", kind, key, self.shared.root)
        return True

    def share(self, kind: str, key: str) -> None:
        """Publish the folder's complete entry ``kind/key`` into the shared cache; a failure
        (a full disk, a folder made read-only) is a warning: the run goes on."""
        if not shareable(kind):
            return
        folder = self._dir(kind, key)
        if not folder.is_dir():
            return
        try:
            self.shared.publish(kind, key, folder)
        except OSError as exc:
            log.warning("could not add cache entry %s/%s to the shared cache %s (%s); the run goes on without it",
                        kind, key, self.shared.root, exc)

    def saved(self, kind: str, key: str) -> None:
        self.share(kind, key)

    def save(self, kind: str, key: str, arrays, meta=None) -> bool:
        written = super().save(kind, key, arrays, meta)
        self.saved(kind, key)
        return written

    def remove(self, kind: str, key: str) -> None:
        """Remove the entry from the folder and from the shared cache: a run removes only
        entries it no longer needs (text chunks once their ensemble is stored)."""
        super().remove(kind, key)
        if shareable(kind):
            self.shared.remove(kind, key)
