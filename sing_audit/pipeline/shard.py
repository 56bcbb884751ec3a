"""Sharded extraction: one deterministic slice of the images per process, merged later.

Two ways to split one audit over several processes share this one mechanism:

* job arrays (SLURM and the like): ``sing-audit run audit.yaml --shard i/N`` for
  ``i = 0 … N-1`` (0-based, like ``SLURM_ARRAY_TASK_ID`` with ``--array=0-(N-1)``), then
  ``sing-audit merge audit.yaml`` once all of them finished;
* ``torchrun --nproc_per_node=K -m sing_audit run audit.yaml``: the shard comes from
  ``RANK``/``WORLD_SIZE``; after a barrier rank 0 merges and analyses.

A shard is a contiguous block of whole batches of the dataset's (sorted) records, so
every image is embedded in exactly the batch it would meet in a single-process run and
the merged features are bit-for-bit those of one process. Each shard goes into its own
store entry (kind ``<kind>-shards``, key ``<key>.shard-<i>-of-<N>``); the merge copies
the shards into the ordinary entry atomically and removes them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..errors import ConfigError, DataError

log = logging.getLogger("sing_audit")

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
#: how long ranks wait for each other at the barrier after extraction (seconds); extraction
#: of a large data set takes hours, so the default is a day
TIMEOUT_ENV = "SING_AUDIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` of ``count`` (0-based)."""

    index: int
    count: int
    #: the process's GPU under torchrun (``LOCAL_RANK``), else ``None``
    local_rank: int | None = None
    distributed: bool = False

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"shard count must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard {self.index}/{self.count}: the index is 0-based and must lie in 0…{self.count - 1} "
                f"(e.g. SLURM --array=0-{self.count - 1})"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def rows(self, n_rows: int, batch_size: int) -> range:
        """This shard's rows: a contiguous block of whole batches (may be empty)."""
        n_batches = -(-n_rows // batch_size)
        first = self.index * n_batches // self.count
        last = (self.index + 1) * n_batches // self.count
        return range(min(first * batch_size, n_rows), min(last * batch_size, n_rows))

    def key(self, key: str) -> str:
        return shard_key(key, self.index, self.count)


def shard_kind(kind: str) -> str:
    return f"{kind}-shards"


def shard_key(key: str, index: int, count: int) -> str:
    return f"{key}.shard-{index}-of-{count}"


def parse_shard(text: str) -> Shard:
    """``"i/N"`` -> :class:`Shard`; a clear error for anything else."""
    m = _SPEC.match(text)
    if not m:
        raise ConfigError(f"--shard {text!r}: expected INDEX/COUNT with a 0-based index, e.g. --shard 0/4")
    return Shard(int(m.group(1)), int(m.group(2)))


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The shard of a torchrun worker (``RANK``/``WORLD_SIZE`` with ``WORLD_SIZE`` > 1)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
        local = int(env["LOCAL_RANK"]) if "LOCAL_RANK" in env else None
    except ValueError as exc:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {exc}") from exc
    if world <= 1:
        return None
    return Shard(rank, world, local_rank=local, distributed=True)


def dist_timeout() -> dt.timedelta:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError as exc:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from exc
    return dt.timedelta(seconds=seconds)


def init_distributed(device: str) -> None:
    """Join torchrun's process group (gloo on the CPU, nccl on CUDA) unless already in one."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend, timeout=dist_timeout())


def barrier_and_leave(keep: bool) -> None:
    """Wait for every rank; leave the group unless ``keep``."""
    import torch.distributed as dist

    dist.barrier()
    if not keep:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- merge


def shard_entries(store, kind: str, key: str) -> dict[int, list[int]]:
    """The shard counts found for ``key``: ``{count: [indices present]}``."""
    folder = store.root / shard_kind(kind)
    found: dict[int, list[int]] = {}
    if not folder.is_dir():
        return found
    pattern = re.compile(re.escape(key) + r"\.shard-(\d+)-of-(\d+)$")
    for path in folder.iterdir():
        m = pattern.match(path.name)
        if m and (path / "meta.json").is_file():
            found.setdefault(int(m.group(2)), []).append(int(m.group(1)))
    return {count: sorted(ix) for count, ix in found.items()}


def merge_shards(store, kind: str, key: str, n_rows: int, label: str) -> bool:
    """Join the complete set of shards of ``key`` into the entry ``key``.

    Returns ``False`` when there is no shard at all; raises :class:`DataError` when some
    are missing or they do not tile the rows.
    """
    from .cache import PartialEntry

    found = shard_entries(store, kind, key)
    complete = sorted(c for c, ix in found.items() if ix == list(range(c)))
    if not found:
        return False
    if not complete:
        count, present = max(found.items(), key=lambda kv: len(kv[1]))
        missing = sorted(set(range(count)) - set(present))
        raise DataError(
            f"{label}: shard(s) {', '.join(f'{i}/{count}' for i in missing)} not finished "
            f"({len(present)} of {count} present); run `sing-audit run CONFIG --shard {missing[0]}/{count}` "
            "for each missing one, then merge"
        )
    count = complete[-1]
    parts = []
    for i in range(count):
        hit = store.load(shard_kind(kind), shard_key(key, i, count))
        if hit is None:
            raise DataError(f"{label}: shard {i}/{count} is corrupt; rerun `sing-audit run CONFIG --shard {i}/{count}`")
        parts.append(hit)
    spans = [tuple(meta["shard_rows"]) for _, meta in parts]
    expected_starts = [0] + [stop for _, stop in spans[:-1]]
    if [s for s, _ in spans] != expected_starts or spans[-1][1] != n_rows or any(
        meta.get("shard_total") != n_rows for _, meta in parts
    ):
        raise DataError(
            f"{label}: the {count} shards cover rows {spans}, not 0…{n_rows} in order (was the data set changed "
            "between shards, or the batch size?); rerun the shards"
        )
    filled = [(arrays, meta) for arrays, meta in parts if arrays["values"].shape[0] > 0]
    first_arrays, first_meta = filled[0]
    dims = {a["values"].shape[1:] for a, _ in filled}
    dtypes = {a["values"].dtype.str for a, _ in filled}
    if len(dims) != 1 or len(dtypes) != 1:
        raise DataError(f"{label}: shards disagree on the rows' shape or dtype ({dims}, {dtypes}); rerun them")
    sink = PartialEntry(store, kind, key, n_rows, first_arrays["values"].dtype.str, {"merged_from": count})
    sink.ensure(first_arrays["values"].shape[1])
    for (arrays, meta), (start, stop) in zip(parts, spans):
        if stop > start:
            sink.write(np.arange(start, stop), np.asarray(arrays["values"]))
            bad = np.flatnonzero(~np.asarray(arrays["ok"], dtype=bool)) + start
            sink.write([], None, bad=bad.tolist())
    small = {k: np.asarray(v) for k, v in first_arrays.items() if k not in ("values", "ok")}
    meta = {k: v for k, v in first_meta.items() if not k.startswith("shard_")}
    sink.finalize(small, meta)
    for i in range(count):
        store.remove(shard_kind(kind), shard_key(key, i, count))
    log.info("%s: merged %d shards into %s", label, count, key)
    return True
