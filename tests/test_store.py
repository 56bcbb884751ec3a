"""The run's content-keyed array store (sing_audit.pipeline.cache), atomic writes and path
safety (sing_audit.store)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sing_audit.pipeline.cache import ArrayStore
from sing_audit.store import atomic_write_bytes, atomic_write_text, content_key, safe_child

SETTINGS = settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "features": rng.standard_normal((7, 5)).astype(np.float32),
        "labels": rng.integers(0, 3, size=7),
        "names": np.array(["a", "bb", "ccc"]),
        "empty": np.zeros((0, 4)),
    }


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- ArrayStore


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path, mmap):
    store = ArrayStore(tmp_path / "cache")
    arrays = _arrays()
    store.save("features", "k1", arrays, {"model": "resnet", "n": 7})
    hit = store.load("features", "k1", mmap=mmap)
    assert hit is not None
    loaded, meta = hit
    assert meta == {"model": "resnet", "n": 7}
    assert set(loaded) == set(arrays)
    for name, arr in arrays.items():
        assert loaded[name].dtype == arr.dtype and loaded[name].shape == arr.shape
        np.testing.assert_array_equal(loaded[name], arr)
    assert _leftovers(tmp_path) == []


@SETTINGS
@given(
    shape=st.lists(st.integers(0, 6), min_size=1, max_size=3),
    dtype=st.sampled_from(["float64", "float32", "int64", "uint8", "bool"]),
    seed=st.integers(0, 1000),
)
def test_round_trip_property(tmp_path, shape, dtype, seed):
    arr = (np.random.default_rng(seed).standard_normal(shape) * 10).astype(dtype)
    store = ArrayStore(tmp_path)
    key = content_key(shape, dtype, seed)
    store.save("x", key, {"values": arr})
    loaded, meta = store.load("x", key, mmap=False)
    assert meta == {}
    assert loaded["values"].dtype == arr.dtype and loaded["values"].shape == arr.shape
    np.testing.assert_array_equal(loaded["values"], arr)


def test_zero_dimensional_array_round_trips(tmp_path):
    store = ArrayStore(tmp_path)
    store.save("k", "scalar", {"s": np.array(3.5)})
    loaded = store.load("k", "scalar", mmap=False)[0]["s"]
    assert loaded.shape == () and loaded == 3.5


def test_non_contiguous_input_round_trips(tmp_path):
    a = np.arange(24.0).reshape(4, 6)[:, ::2].T
    store = ArrayStore(tmp_path)
    store.save("k", "nc", {"a": a})
    np.testing.assert_array_equal(store.load("k", "nc")[0]["a"], a)


def test_missing_entry_is_none(tmp_path):
    assert ArrayStore(tmp_path).load("features", "nothing") is None


@pytest.mark.parametrize("where", [-1, 0, 200])
def test_flipped_byte_makes_entry_missing(tmp_path, where):
    store = ArrayStore(tmp_path)
    store.save("features", "k", {"f": np.arange(100.0)})
    path = tmp_path / "features" / "k" / "f.npy"
    data = bytearray(path.read_bytes())
    data[where] ^= 0x01
    path.write_bytes(bytes(data))
    assert store.load("features", "k") is None
    assert store.load("features", "k", mmap=False) is None


def test_truncated_array_makes_entry_missing(tmp_path):
    store = ArrayStore(tmp_path)
    store.save("features", "k", {"f": np.arange(100.0)})
    path = tmp_path / "features" / "k" / "f.npy"
    path.write_bytes(path.read_bytes()[:-8])
    assert store.load("features", "k") is None


def test_missing_meta_makes_entry_missing(tmp_path):
    store = ArrayStore(tmp_path)
    store.save("features", "k", {"f": np.arange(5.0)})
    (tmp_path / "features" / "k" / "meta.json").unlink()
    assert store.load("features", "k") is None


@pytest.mark.parametrize("content", ["{not json", "", json.dumps({"meta": {}}), json.dumps({"_arrays": {"f": "0" * 64}})])
def test_corrupt_meta_makes_entry_missing(tmp_path, content):
    store = ArrayStore(tmp_path)
    store.save("features", "k", {"f": np.arange(5.0)})
    (tmp_path / "features" / "k" / "meta.json").write_text(content)
    assert store.load("features", "k") is None


@pytest.mark.parametrize("content", ["[]", json.dumps({"_arrays": ["f"]})])
def test_meta_of_wrong_shape_makes_entry_missing(tmp_path, content):
    store = ArrayStore(tmp_path)
    store.save("features", "k", {"f": np.arange(5.0)})
    (tmp_path / "features" / "k" / "meta.json").write_text(content)
    assert store.load("features", "k") is None


def test_missing_array_file_makes_entry_missing(tmp_path):
    store = ArrayStore(tmp_path)
    store.save("features", "k", {"f": np.arange(5.0), "g": np.ones(2)})
    (tmp_path / "features" / "k" / "g.npy").unlink()
    assert store.load("features", "k") is None


def test_failed_save_leaves_no_entry_and_no_temporary_folder(tmp_path, monkeypatch):
    store = ArrayStore(tmp_path)
    real_rename = os.rename

    def failing_rename(src, dst):
        if Path(dst).name == "k":
            raise OSError("disk full")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk full"):
        store.save("features", "k", {"f": np.arange(5.0)})
    assert store.load("features", "k") is None
    assert list((tmp_path / "features").iterdir()) == []


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_text_writes_and_overwrites(tmp_path):
    path = tmp_path / "sub" / "results.json"
    atomic_write_text(path, "first ✓")
    assert path.read_text(encoding="utf-8") == "first ✓"
    atomic_write_text(path, "second")
    assert path.read_text(encoding="utf-8") == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_atomic_write_failure_keeps_old_content_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    atomic_write_text(path, "old content")

    def boom(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_text(path, "new content that must never be half-written")
    assert path.read_text() == "old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_atomic_write_failure_during_write_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "new.bin"

    def boom(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="fsync failed"):
        atomic_write_bytes(path, b"\x00" * 1000)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_interrupt_cleans_up(tmp_path, monkeypatch):
    """KeyboardInterrupt (Ctrl-C) is not an Exception; the temp file must still go."""
    path = tmp_path / "x.txt"

    def interrupt(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "data")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- safe_child / content_key


def test_safe_child_accepts_children(tmp_path):
    assert safe_child(tmp_path, "a/b.html") == tmp_path.resolve() / "a" / "b.html"
    assert safe_child(tmp_path, "a/../b") == tmp_path.resolve() / "b"
    assert safe_child(tmp_path, ".") == tmp_path.resolve()
    assert safe_child(tmp_path, str(tmp_path / "inner")) == tmp_path.resolve() / "inner"


@pytest.mark.parametrize("relative", ["../x", "a/../../x", "/etc/passwd", "..", "../" + "sibling/file"])
def test_safe_child_refuses_escapes(tmp_path, relative):
    root = tmp_path / "out"
    root.mkdir()
    with pytest.raises(ValueError):
        safe_child(root, relative)


def test_safe_child_refuses_prefix_sibling(tmp_path):
    """/tmp/out-evil is not inside /tmp/out even though the string starts the same."""
    root = tmp_path / "out"
    root.mkdir()
    with pytest.raises(ValueError):
        safe_child(root, str(tmp_path / "out-evil" / "x"))


def test_safe_child_refuses_symlink_escape(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError):
        safe_child(root, "link/file.txt")


@SETTINGS
@given(
    d=st.dictionaries(st.text(min_size=1, max_size=5), st.one_of(st.integers(), st.text(max_size=5), st.floats(allow_nan=False)), max_size=6)
)
def test_content_key_is_stable_for_key_order(d):
    reordered = dict(reversed(list(d.items())))
    assert content_key("x", d) == content_key("x", reordered)
    assert content_key({"outer": d, "n": 1}) == content_key({"n": 1, "outer": reordered})
    key = content_key(d)
    assert len(key) == 32 and all(c in "0123456789abcdef" for c in key)


def test_content_key_distinguishes_content():
    assert content_key({"a": 1}) != content_key({"a": 2})
    assert content_key("a", "b") != content_key("ab")
    assert content_key([1, 2]) != content_key([2, 1])
    assert content_key(Path("/x")) == content_key("/x")  # default=str
    # a fixed value: the key must not change between runs or Python versions
    assert content_key({"b": 1, "a": [1, 2]}) == content_key({"a": [1, 2], "b": 1})


def test_atomic_write_honours_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "results.json", "{}")
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(old)
    plain = (tmp_path / "plain.json").stat().st_mode & 0o777
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == plain == 0o644


# --------------------------------------------------------------------------- corrupt entries are logged


def _corrupt_entry(root: Path, how: str) -> str:
    """Damage the saved entry features/k as ``how`` says; return the reason the log must give."""
    folder = root / "features" / "k"
    if how == "flipped byte":
        data = bytearray((folder / "f.npy").read_bytes())
        data[-3] ^= 0x01
        (folder / "f.npy").write_bytes(bytes(data))
        return "digest mismatch in f.npy"
    if how == "meta not json":
        (folder / "meta.json").write_text("{not json")
        return "meta.json"
    if how == "meta missing":
        (folder / "meta.json").unlink()
        return "meta.json is missing"
    if how == "array missing":
        (folder / "g.npy").unlink()
        return "g.npy is missing"
    if how == "bad npy with its digest":
        (folder / "f.npy").write_bytes(b"not an npy file at all")
        meta = json.loads((folder / "meta.json").read_text())
        import hashlib

        meta["_arrays"]["f"] = hashlib.sha256(b"not an npy file at all").hexdigest()
        (folder / "meta.json").write_text(json.dumps(meta))
        return "f.npy cannot be read"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["flipped byte", "meta not json", "meta missing", "array missing", "bad npy with its digest"])
def test_corrupt_entry_is_logged_with_its_reason(tmp_path, caplog, how):
    import logging

    store = ArrayStore(tmp_path)
    store.save("features", "k", {"f": np.arange(100.0), "g": np.ones(2)})
    reason = _corrupt_entry(tmp_path, how)
    with caplog.at_level(logging.WARNING, logger="sing_audit"):
        assert store.load("features", "k") is None
    warnings = [r for r in caplog.records if r.name == "sing_audit" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    text = warnings[0].getMessage()
    assert "features/k" in text and reason in text and "recomputed" in text


def test_missing_entry_is_silent(tmp_path, caplog):
    import logging

    store = ArrayStore(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="sing_audit"):
        assert store.load("features", "nothing") is None
        store.save("features", "other", {"f": np.ones(2)})
        assert store.load("features", "nothing") is None
        assert store.load("features", "other") is not None
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def _partial(store, key="k", batch_size=2):
    from sing_audit.pipeline.cache import PartialEntry

    return PartialEntry(store, "features", key, 10, "float32", {"batch_size": batch_size})


def _committed_partial(store) -> None:
    p = _partial(store)
    p.write([0, 1], np.ones((2, 3)))
    p.commit(2)


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("fingerprint", "another fingerprint"),
        ("values", "values.npy"),
        ("progress", "progress.json"),
    ],
)
def test_discarded_partial_entry_is_logged(tmp_path, caplog, damage, reason):
    import logging

    store = ArrayStore(tmp_path)
    _committed_partial(store)
    folder = tmp_path / "features" / ".partial-k"
    if damage == "values":
        (folder / "values.npy").write_bytes(b"garbage")
    elif damage == "progress":
        (folder / "progress.json").write_text("{broken")
    with caplog.at_level(logging.WARNING, logger="sing_audit"):
        again = _partial(store, batch_size=4 if damage == "fingerprint" else 2)
    assert again.done == 0 and again.values is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "sing_audit" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "features/k" in warnings[0] and reason in warnings[0] and "recomputed" in warnings[0]


def test_resumed_or_absent_partial_entry_is_silent(tmp_path, caplog):
    import logging

    store = ArrayStore(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="sing_audit"):
        _committed_partial(store)  # no partial folder yet: a fresh start
        again = _partial(store)  # same fingerprint: resumed
    assert again.done == 2
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_corrupt_cache_entry_of_a_real_run_is_logged(tmp_path, synthetic_config, scenario_dir):
    """A real audit whose cached subspace file is damaged between two runs: the second
    run recomputes it and its log file says which entry and why."""
    from sing_audit.cli import main

    cfg = synthetic_config(backbones=[{"name": "benign", "plugin": "precomputed", "path": str(scenario_dir / "benign.npz")}])
    assert main(["run", str(cfg)]) == 0
    out = tmp_path / "out"
    null = next((out / "cache" / "subspaces").glob("*/null.npy"))
    key = null.parent.name
    data = bytearray(null.read_bytes())
    data[-1] ^= 0xFF
    null.write_bytes(bytes(data))
    assert main(["run", str(cfg)]) == 0
    log = (out / "logs" / "run.log").read_text(encoding="utf-8")
    line = next((ln for ln in log.splitlines() if f"subspaces/{key}" in ln), "")
    assert "WARNING" in line and "digest mismatch in null.npy" in line and "recomputed" in line, log


def test_interrupted_finalize_keeps_its_rows_resumable(tmp_path, monkeypatch):
    """finalize claims the partial folder under a unique name; interrupted before the
    entry is published, the folder gets its partial name back and resumes complete."""
    from sing_audit.pipeline import cache as store_module

    store = ArrayStore(tmp_path)
    p = _partial(store)
    p.write(list(range(10)), np.ones((10, 3)))
    real = store_module.atomic_write_text

    def interrupted(path, text):
        if Path(path).name == "meta.json":
            raise KeyboardInterrupt
        return real(path, text)

    monkeypatch.setattr(store_module, "atomic_write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        p.finalize({}, {"m": 1})
    monkeypatch.setattr(store_module, "atomic_write_text", real)
    again = _partial(store)
    assert again.done == 10
    np.testing.assert_array_equal(again.values, np.ones((10, 3)))
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == [".partial-k"]
