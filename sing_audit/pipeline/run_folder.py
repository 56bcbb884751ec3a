"""The output folder of a run: who may write it, whose it is, and what the tool wrote there.

- **A lock** (``.sing-audit/lock``, :class:`filelock.ReadWriteLock`): a run, a merge or an
  explanation holds it exclusively; the shard extractions of one audit share it (they
  write disjoint cache entries). A second run on the same folder is refused at once with
  the holder named (or waits, with ``wait``). The lock is an SQLite database, whose
  locks the operating system releases when a process dies, so a lock left by a killed run
  is free; the holder record it left behind (``.sing-audit/holders/``) is recognised as
  stale and removed, with a log line.
- **A marker** (``audit.json``): the identity of the audit the folder holds (its inputs,
  :func:`sing_audit.pipeline.plan.audit_identity`) and a manifest of the outputs the tool wrote.
  A folder is *claimed* — the marker written — only when the run is about to store
  something it measured (the first cache entry) or its outputs, so a run that fails on a
  config or weights error leaves the folder unclaimed and a corrected config runs there
  without ``--force``.
- **The manifest**: every output file of the last run (results.json, reports, CSVs,
  per-model files). ``--force`` over another audit removes exactly those files (never a
  user's), and every run removes those of its previous run that it did not write again,
  so no stale junit.xml, summary.md or ``models/<old model>/`` survives. The cache
  (content-keyed, reused when the inputs match) and ``logs/`` (history) stay.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import OutputFolderError
from ..store import atomic_write_text, safe_child

__all__ = ["MARKER", "STATE_DIR", "Holder", "RunFolder"]

log = logging.getLogger("sing_audit")

MARKER = "audit.json"
STATE_DIR = ".sing-audit"
#: seconds a refused run waits for the holder's record, written just after its lock is taken
HOLDER_RECORD_GRACE_S = 2.0
#: what a folder holds when sing-audit started in it but never claimed it
_UNCLAIMED_NAMES = {STATE_DIR, "logs"}


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) an output folder's lock."""

    pid: int
    host: str
    command: str
    started: str
    mode: str

    @classmethod
    def current(cls, mode: str) -> "Holder":
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            command=" ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv)) or "python",
            started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            mode=mode,
        )

    @property
    def file_name(self) -> str:
        return f"{self.host}-{self.pid}.json"

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (`{self.command}`, started {self.started})"

    def alive(self) -> bool | None:
        """Whether the process still runs: ``None`` when it is on another host."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class RunFolder:
    """One run's hold on its output folder (a context manager).

    ``identity``: the audit's identity; ``force``: replace a folder that holds another
    audit (or files that are not a sing-audit run); ``shared``: a shard extraction, which
    shares the lock with the other shards of the audit; ``wait``: seconds to wait for a
    run that holds the folder (``None``: refuse at once; ``-1``: wait as long as it takes);
    ``notify``: called with a sentence when the run starts waiting (the CLI prints it).
    """

    def __init__(self, path: Path, identity: str, *, force: bool = False, shared: bool = False,
                 wait: float | None = None, notify=None):
        self.path = Path(path)
        self.notify = notify
        self.identity = identity
        self.force = force
        self.shared = shared
        self.wait = wait
        self.claimed = False
        #: what opening the folder found worth logging (the run logs it once its log is open)
        self.notes: list[str] = []
        self._lock = None
        self._holder: Holder | None = None
        self._previous_identity: str | None = None
        self._previous_outputs: list[str] = []
        self._written: list[str] = []

    # ----------------------------------------------------------------- opening

    def __enter__(self) -> "RunFolder":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Check the folder may be used, create it and take the lock (nothing is claimed)."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise OutputFolderError(f"output {out} exists and is not a folder")
        self._check_not_foreign()
        (out / STATE_DIR / "holders").mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            self._clear_stale_holders()
            self._holder = Holder.current("shared" if self.shared else "exclusive")
            atomic_write_text(self._holder_path(self._holder), json.dumps(self._holder.__dict__))
            self._read_marker()
            if self._previous_identity is not None and self._previous_identity != self.identity and not self.force:
                raise OutputFolderError(
                    f"output folder {out} holds a different audit (its dataset, targets or backbones differ); "
                    "choose another output, or pass --force to replace it"
                )
        except BaseException:
            self.close()
            raise

    def _check_not_foreign(self) -> None:
        out = self.path
        if not out.is_dir() or self.force or (out / MARKER).is_file():
            return
        others = [p.name for p in out.iterdir() if p.name not in _UNCLAIMED_NAMES and not p.name.startswith(f".{MARKER}.")]
        if others:
            raise OutputFolderError(
                f"output folder {out} is not empty and holds no sing-audit run; choose an empty or new folder, "
                "or pass --force to write into it"
            )

    def _acquire(self) -> None:
        from filelock import ReadWriteLock, Timeout

        lock_file = self.path / STATE_DIR / "lock"
        lock = ReadWriteLock(str(lock_file), is_singleton=False)
        acquire = lock.acquire_read if self.shared else lock.acquire_write
        blocking = self.wait is not None
        timeout = -1 if self.wait is None or self.wait < 0 else float(self.wait)
        try:
            acquire(timeout=0, blocking=False)
        except Timeout:
            if not blocking:
                return self._refuse(lock, waited=False)
            live = [h for h in self._holders() if h.alive() is not False]
            message = f"output folder {self.path} is in use by {'; '.join(h.describe() for h in live) or 'another run'}; waiting"
            log.info("%s", message)
            if self.notify is not None:
                self.notify(message)
            try:
                acquire(timeout=timeout, blocking=True)
            except Timeout:
                return self._refuse(lock, waited=True)
        self._lock = lock

    def _refuse(self, lock, waited: bool) -> None:
        lock.close()
        holders = [h for h in self._holders() if h.alive() is not False]
        # a run writes its holder record just after taking the lock: one started at the same
        # moment may look in between, so give the record a moment before naming nobody
        deadline = time.monotonic() + HOLDER_RECORD_GRACE_S
        while not holders and time.monotonic() < deadline:
            time.sleep(0.05)
            holders = [h for h in self._holders() if h.alive() is not False]
        who = "; ".join(h.describe() for h in holders) or "another sing-audit process"
        how_long = f" (waited {self.wait:g} s)" if waited else ""
        raise OutputFolderError(
            f"output folder {self.path} is in use by {who}{how_long}; wait until it finishes, pass --wait to "
            "queue behind it, or choose another output (-o output=...)"
        )

    def _holder_path(self, holder: Holder) -> Path:
        return self.path / STATE_DIR / "holders" / holder.file_name

    def _holders(self) -> list[Holder]:
        out = []
        for path in sorted((self.path / STATE_DIR / "holders").glob("*.json")):
            try:
                out.append(Holder(**json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError):
                continue
        return out

    def _clear_stale_holders(self) -> None:
        """Remove the records of holders that no longer hold the lock (a killed run's).

        Holding the lock exclusively, every record is stale; holding it shared, only the
        records of exclusive holders and of processes that no longer run are."""
        for holder in self._holders():
            if holder.pid == os.getpid() and holder.host == socket.gethostname():
                continue
            stale = not self.shared or holder.mode == "exclusive" or holder.alive() is False
            if stale:
                self.notes.append(
                    f"output folder {self.path}: took over from {holder.describe()}, which no longer holds it "
                    "(killed or crashed?)"
                )
                self._holder_path(holder).unlink(missing_ok=True)

    def close(self) -> None:
        """Release the lock (the folder stays as it is)."""
        if self._holder is not None:
            self._holder_path(self._holder).unlink(missing_ok=True)
            self._holder = None
        if self._lock is not None:
            self._lock.release()
            self._lock.close()
            self._lock = None

    # ----------------------------------------------------------------- marker and manifest

    def _read_marker(self) -> None:
        marker = self.path / MARKER
        if not marker.is_file():
            return
        try:
            data = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            data = {}
        self._previous_identity = data.get("identity") if isinstance(data, dict) else None
        outputs = data.get("outputs") if isinstance(data, dict) else None
        self._previous_outputs = [str(p) for p in outputs] if isinstance(outputs, list) else []
        if self._previous_identity is None:  # unreadable marker: the folder is ours, its audit unknown
            self._previous_identity = ""

    def claim(self) -> None:
        """Write the marker: the folder now holds this audit. Idempotent.

        Over another audit (``--force``), the files the previous audit's manifest lists
        are removed first, so none of them is shown beside this audit's results."""
        if self.claimed:
            return
        if self._previous_identity not in (None, self.identity):
            removed = self._remove(self._previous_outputs)
            if removed:
                log.info("--force: removed %d output file(s) of the previous audit in %s", removed, self.path)
            self._previous_outputs = []
        self.claimed = True
        self._save_manifest()

    def record(self, relative: str | Path) -> None:
        """Note that the run wrote ``relative`` (a path inside the folder)."""
        rel = Path(relative).as_posix()
        if rel not in self._written:
            self._written.append(rel)
            self._save_manifest()

    def remove_stale_outputs(self) -> None:
        """Remove the previous run's outputs that this run has not written again; call it
        once the analysis is done, before writing results.json and the reports."""
        self.claim()
        stale = [p for p in self._previous_outputs if p not in self._written]
        removed = self._remove(stale)
        if removed:
            log.info("removed %d output file(s) of the previous run that this run does not write", removed)
        self._previous_outputs = []
        self._save_manifest()

    @property
    def written(self) -> list[str]:
        return list(self._written)

    def _save_manifest(self) -> None:
        outputs = list(dict.fromkeys([*self._previous_outputs, *self._written]))
        data = {"identity": self.identity, "tool": f"sing-audit {__version__}", "outputs": outputs}
        atomic_write_text(self.path / MARKER, json.dumps(data, indent=2))

    def _remove(self, relatives: list[str]) -> int:
        """Delete the listed files (inside the folder only) and the folders they leave empty."""
        root = self.path.resolve()
        removed = 0
        for rel in relatives:
            name = Path(rel).name
            try:  # the folder it sits in must lie inside; the entry itself may be a symlink, which is removed, not followed
                path = safe_child(root, str(Path(rel).parent)) / name
            except ValueError:
                log.warning("manifest entry %r lies outside the output folder; left alone", rel)
                continue
            if name in ("", ".", "..", MARKER, STATE_DIR) or not (path.is_file() or path.is_symlink()):
                continue
            path.unlink(missing_ok=True)
            removed += 1
            parent = path.parent
            while parent != root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        return removed
