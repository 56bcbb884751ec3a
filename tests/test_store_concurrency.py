"""Several writers of one content-keyed cache entry at once (sing_audit.store).

Shards of one audit, or two audits sharing an output folder, may compute the same entry
at the same time. Every writer must finish without an exception, and once a valid entry
exists every load must return it: a valid entry is never removed to make room for an
identical one.
"""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import numpy as np
import pytest

from sing_audit.pipeline.cache import ArrayStore, PartialEntry

KIND, KEY = "features", "0123456789abcdef"


def _arrays() -> dict[str, np.ndarray]:
    """The entry's content: the same for every writer, as content keys promise."""
    return {"values": np.arange(60_000, dtype=np.float64).reshape(300, 200), "ok": np.ones(300, dtype=bool)}


def _is_the_entry(hit) -> bool:
    if hit is None:
        return False
    arrays, meta = hit
    expected = _arrays()
    return set(arrays) == set(expected) and all(np.array_equal(arrays[k], expected[k]) for k in expected) and meta == {"m": 1}


def _save_many(root: str, times: int) -> None:
    """Save the entry ``times`` times (module level, so a spawned process can run it)."""
    store = ArrayStore(Path(root))
    for _ in range(times):
        store.save(KIND, KEY, _arrays(), {"m": 1})


def _hidden_leftovers(root: Path) -> list[str]:
    folder = root / KIND
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


class _Reader(threading.Thread):
    """Loads the entry in a loop; counts loads that fail after one has succeeded."""

    def __init__(self, store: ArrayStore, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.store, self.stop = store, stop
        self.valid = 0
        self.lost = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                hit = self.store.load(KIND, KEY, mmap=False)
                if _is_the_entry(hit):
                    self.valid += 1
                elif self.valid:
                    self.lost += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)


def _run_threads(targets) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def wrap(fn):
        def run():
            try:
                barrier.wait()
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return errors


def test_threads_saving_one_key_never_fail_and_never_lose_the_entry(tmp_path):
    store = ArrayStore(tmp_path)
    stop = threading.Event()
    readers = [_Reader(store, stop) for _ in range(2)]
    for r in readers:
        r.start()
    errors = _run_threads([lambda: _save_many(str(tmp_path), 15) for _ in range(8)])
    stop.set()
    for r in readers:
        r.join(timeout=60)
    assert errors == [], errors[:3]
    assert [e for r in readers for e in r.errors] == []
    assert sum(r.lost for r in readers) == 0, "a valid entry went missing while identical ones were saved"
    assert _is_the_entry(store.load(KIND, KEY))
    assert _hidden_leftovers(tmp_path) == []


def test_processes_saving_one_key_never_fail(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_save_many, args=(str(tmp_path), 10)) for _ in range(4)]
    for p in procs:
        p.start()
    store = ArrayStore(tmp_path)
    stop = threading.Event()
    reader = _Reader(store, stop)
    reader.start()
    for p in procs:
        p.join(timeout=300)
    stop.set()
    reader.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    assert reader.errors == [] and reader.lost == 0
    assert _is_the_entry(store.load(KIND, KEY))
    assert _hidden_leftovers(tmp_path) == []


def _finalize_partial(root: Path) -> None:
    store = ArrayStore(root)
    arrays = _arrays()
    sink = PartialEntry(store, KIND, KEY, arrays["values"].shape[0], "float64", {"batch_size": 50})
    for start in range(0, 300, 50):
        rows = list(range(start, start + 50))
        sink.write(rows, arrays["values"][start : start + 50])
        sink.commit(start + 50)
    sink.finalize({}, {"m": 1})


def test_finalize_racing_with_saves_of_the_same_key(tmp_path):
    store = ArrayStore(tmp_path)
    stop = threading.Event()
    reader = _Reader(store, stop)
    reader.start()
    errors = _run_threads([lambda: _finalize_partial(tmp_path)] + [lambda: _save_many(str(tmp_path), 10) for _ in range(6)])
    stop.set()
    reader.join(timeout=60)
    assert errors == [], errors[:3]
    assert reader.errors == [] and reader.lost == 0
    assert _is_the_entry(store.load(KIND, KEY))
    assert _hidden_leftovers(tmp_path) == []


# --------------------------------------------------------------------------- sequential semantics


def test_saving_an_entry_that_is_already_valid_keeps_it(tmp_path):
    """Content-keyed: an entry that is already there and valid is the same content; it is
    kept (a reader may have it open) and the new copy dropped."""
    store = ArrayStore(tmp_path)
    store.save(KIND, KEY, _arrays(), {"m": 1})
    before = (tmp_path / KIND / KEY / "values.npy").stat().st_ino
    store.save(KIND, KEY, _arrays(), {"m": 1})
    assert (tmp_path / KIND / KEY / "values.npy").stat().st_ino == before
    assert _is_the_entry(store.load(KIND, KEY))
    assert _hidden_leftovers(tmp_path) == []


def test_saving_over_a_corrupt_entry_replaces_it(tmp_path):
    store = ArrayStore(tmp_path)
    store.save(KIND, KEY, _arrays(), {"m": 1})
    (tmp_path / KIND / KEY / "values.npy").write_bytes(b"damaged")
    assert store.load(KIND, KEY) is None
    store.save(KIND, KEY, _arrays(), {"m": 1})
    assert _is_the_entry(store.load(KIND, KEY))
    assert _hidden_leftovers(tmp_path) == []


@pytest.mark.parametrize("existing", ["valid", "corrupt"])
def test_finalize_onto_an_existing_entry(tmp_path, existing):
    store = ArrayStore(tmp_path)
    store.save(KIND, KEY, _arrays(), {"m": 1})
    if existing == "corrupt":
        (tmp_path / KIND / KEY / "meta.json").write_text("{broken")
    else:
        before = (tmp_path / KIND / KEY / "values.npy").stat().st_ino
    _finalize_partial(tmp_path)
    assert _is_the_entry(store.load(KIND, KEY))
    if existing == "valid":
        assert (tmp_path / KIND / KEY / "values.npy").stat().st_ino == before
    assert _hidden_leftovers(tmp_path) == []
