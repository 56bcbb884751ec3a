"""The cache shared across audits (sing_audit.pipeline.shared_cache): a new output folder
auditing the same model on the same data reuses the forwards; where it is and how it is
turned off; LRU pruning within the bound; corrupt entries; concurrent writers; the
`sing-audit cache` command; hostile folders.

The autouse fixture of conftest.py turns the shared cache off for every other test; the
tests here point SING_AUDIT_CACHE_DIR (or run.cache_dir) to a folder of their own."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

from sing_audit.cli import main
from sing_audit.errors import ConfigError
from sing_audit.pipeline.cache import ArrayStore
from sing_audit.pipeline.shared_cache import (
    CACHE_DIR_ENV,
    CACHE_MAX_SIZE_ENV,
    DEFAULT_MAX_SIZE,
    TAG_NAME,
    LayeredStore,
    SharedCache,
    cache_setting,
    open_shared_cache,
)
from sing_audit.synthetic import write_image_folder

from .conftest import write_config

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A real open_clip CLIP architecture, shrunk (registered like a user's own config)."""
    import open_clip

    path = tmp_path_factory.mktemp("clipcfg") / "sing-shared-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(path)
    return "sing-shared-tiny-clip"


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images") / "val", per_class=3, size=32)


def _audit(folder: Path, image_root: Path, tiny_clip: str, output: str = "out", **run) -> Path:
    """A real image audit (timm resnet18 and a tiny open_clip, random init) writing ``output``."""
    return write_config(folder, {
        "output": output,
        "dataset": {"plugin": "image_folder", "root": str(image_root)},
        "target": {"plugin": "open_clip", "name": "clip", "model": tiny_clip, "weights": "random"},
        "backbones": [{"name": "r18", "plugin": "timm", "model": "resnet18", "weights": "random", "img_size": 32}],
        "report": {"formats": ["json"]},
        "policy": {"allow_not_assessed": True},
        "run": {"device": "cpu", "batch_size": 4, "folds": 2, "bootstrap": 100, **run},
    }, name=f"{output}.yaml")


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _numbers(result: dict) -> list:
    """What a run measured (models with their classes), without timings and provenance."""
    return [{k: v for k, v in m.items() if k not in ("files",)} for m in result["models"]]


def _log(out: Path) -> str:
    return "\n".join(p.read_text() for p in sorted((out / "logs").glob("*.log")))


@pytest.fixture
def shared(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "shared"
    monkeypatch.setenv(CACHE_DIR_ENV, str(folder))
    return folder


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_new_output_folder_reuses_the_forwards_of_the_shared_cache(tmp_path, shared, image_root, tiny_clip):
    assert main(["run", str(_audit(tmp_path, image_root, tiny_clip, "first"))]) == 0
    first = _results(tmp_path / "first")
    assert {"extract", "text"} <= set(first["provenance"]["stage_seconds"])
    assert (shared / TAG_NAME).is_file()
    kinds = {p.name for p in shared.iterdir() if p.is_dir()}
    assert {"features", "embeddings", "text", "subspaces"} <= kinds
    assert not any(p.name.endswith("-shards") for p in shared.iterdir())

    assert main(["run", str(_audit(tmp_path, image_root, tiny_clip, "second"))]) == 0
    second = _results(tmp_path / "second")
    # nothing was extracted or encoded: both stages never ran
    assert not {"extract", "text"} & set(second["provenance"]["stage_seconds"])
    assert _numbers(second) == _numbers(first)
    log = _log(tmp_path / "second")
    assert f"entries from the shared cache {shared.resolve()}" in log
    # the entries are in the new folder's own cache: hard links of the shared files
    feat = next((tmp_path / "second" / "cache" / "features").glob("*/values.npy"))
    twin = shared / "features" / feat.parent.name / "values.npy"
    assert os.path.samefile(feat, twin)


def _synthetic(synthetic_config, tmp_path: Path, name: str, **run) -> Path:
    """The synthetic demo (precomputed inputs: its store entries are the heads' subspaces)
    writing ``tmp_path/name``."""
    path = synthetic_config(output=str(tmp_path / name), run={"bootstrap": 200, **run})
    return path.rename(tmp_path / f"{name}.yaml")


def test_off_by_environment_or_config_uses_no_shared_entry(tmp_path, shared, synthetic_config, monkeypatch):
    assert main(["run", str(_synthetic(synthetic_config, tmp_path, "first"))]) == 1
    assert len(list((shared / "subspaces").iterdir())) == 2
    assert main(["run", str(_synthetic(synthetic_config, tmp_path, "second"))]) == 1
    assert f"2 entries from the shared cache {shared.resolve()}" in _log(tmp_path / "second")
    assert main(["run", str(_synthetic(synthetic_config, tmp_path, "third", cache_dir=False))]) == 1
    assert "shared cache: off (run.cache_dir in the config)" in _log(tmp_path / "third")
    assert "from the shared cache" not in _log(tmp_path / "third")
    monkeypatch.setenv(CACHE_DIR_ENV, "Off")
    assert main(["run", str(_synthetic(synthetic_config, tmp_path, "fourth"))]) == 1
    assert "shared cache: off (SING_AUDIT_CACHE_DIR in the environment)" in _log(tmp_path / "fourth")
    assert "from the shared cache" not in _log(tmp_path / "fourth")
    # what the four runs measured is the same, from the shared cache or not
    assert _numbers(_results(tmp_path / "second")) == _numbers(_results(tmp_path / "first")) == _numbers(_results(tmp_path / "fourth"))


def test_config_cache_dir_is_relative_to_the_config_and_wins_over_the_environment(tmp_path, shared, synthetic_config):
    assert main(["run", str(_synthetic(synthetic_config, tmp_path, "first", cache_dir="mine"))]) == 1
    assert (tmp_path / "mine" / TAG_NAME).is_file() and (tmp_path / "mine" / "subspaces").is_dir()
    assert not shared.exists()  # the environment's folder was not used


# --------------------------------------------------------------------------- where it is


def test_setting_precedence_and_off_words(tmp_path):
    env = {CACHE_DIR_ENV: str(tmp_path / "env"), CACHE_MAX_SIZE_ENV: "2GB"}
    s = cache_setting(tmp_path / "cfg", None, env)
    assert (s.path, s.source, s.max_size, s.max_size_source) == (tmp_path / "cfg", "config", 2 * 10**9, "environment")
    assert cache_setting(False, None, env).path is None
    s = cache_setting(None, 5, env)
    assert (s.path, s.source, s.max_size) == (tmp_path / "env", "environment", 5)
    for word in ("off", "0", "False", "NONE"):
        assert cache_setting(None, None, {CACHE_DIR_ENV: word}).path is None
    import platformdirs

    s = cache_setting(None, None, {})
    assert (s.path, s.source, s.max_size) == (Path(platformdirs.user_cache_dir("sing-audit")), "default", DEFAULT_MAX_SIZE)
    with pytest.raises(ConfigError, match="SING_AUDIT_CACHE_MAX_SIZE='lots' is not a size"):
        cache_setting(None, None, {CACHE_MAX_SIZE_ENV: "lots"})


def test_config_keys_validate(tmp_path):
    from sing_audit.config import load_config

    base = {"output": "o", "backbones": [{"name": "a", "plugin": "precomputed", "path": "a.npz"}],
            "target": {"plugin": "precomputed", "path": "t.npz"}}
    cfg = load_config(write_config(tmp_path, {**base, "run": {"cache_dir": "c", "cache_max_size": "1GiB"}}))
    assert cfg.run.cache_max_size == 2**30
    from sing_audit.pipeline.shared_cache import setting_of

    assert setting_of(cfg).path == tmp_path / "c"
    with pytest.raises(ConfigError, match="true is not a folder"):
        load_config(write_config(tmp_path, {**base, "run": {"cache_dir": True}}))
    with pytest.raises(ConfigError, match="cache_max_size"):
        load_config(write_config(tmp_path, {**base, "run": {"cache_max_size": "big"}}))


def test_hostile_cache_folders_are_refused_with_clear_errors(tmp_path):
    def setting(path):
        return cache_setting(path, None, {})

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):
        open_shared_cache(setting(a_file))
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="lies inside the output folder"):
        open_shared_cache(setting(out / "cache"), out)
    with pytest.raises(ConfigError, match="lies inside the shared cache"):
        open_shared_cache(setting(tmp_path), out)
    (out / ".sing-audit").mkdir(parents=True)
    with pytest.raises(ConfigError, match="inside the audit output folder"):
        open_shared_cache(setting(out / "elsewhere"))
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not a sing-audit cache"):
        open_shared_cache(setting(home))
    assert (home / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere")
def test_unwritable_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot create|not writable"):
            open_shared_cache(cache_setting(locked / "cache", None, {}))
    finally:
        locked.chmod(0o700)


def test_a_folder_that_cannot_be_created_is_refused(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    with pytest.raises(ConfigError, match="cannot create the shared cache"):
        open_shared_cache(cache_setting(blocker / "below" / "cache", None, {}))


def test_unusable_cache_from_the_environment_warns_and_the_run_goes_on(tmp_path, monkeypatch, synthetic_config, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker))
    assert main(["run", str(synthetic_config())]) == 1  # the demo's verdict: it ran
    err = capsys.readouterr().err
    assert "is not a folder" in err and "the run goes on without the shared cache" in err
    assert "the run goes on without the shared cache" in _log(tmp_path / "out")


def test_unusable_cache_named_by_the_config_is_a_config_error(tmp_path, synthetic_config, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    assert main(["run", str(synthetic_config(run={"cache_dir": str(blocker)}))]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["a file", "inside its output folder", "someone else's folder"])
def test_validate_refuses_the_cache_dir_the_run_would_refuse(tmp_path, synthetic_config, capsys, where):
    """validate finds a bad run.cache_dir before a run does, and creates nothing."""
    folder = {"a file": tmp_path / "blocker", "inside its output folder": tmp_path / "out" / "shared",
              "someone else's folder": tmp_path / "home"}[where]
    if where == "a file":
        folder.write_text("a file, not a folder")
    elif where == "someone else's folder":
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    config = synthetic_config(run={"cache_dir": str(folder)})
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "run.cache_dir" in err and str(folder.resolve()) in err
    assert not (tmp_path / "out").exists()  # nothing created, the output folder neither
    assert main(["run", str(config)]) == 2


# --------------------------------------------------------------------------- the store tiers


def _entry(store, key: str, n: int = 1000, value: float = 1.0):
    store.save("features", key, {"values": np.full(n, value, dtype=np.float32)}, {"n": n})


def _layered(tmp_path: Path, name: str, shared: SharedCache) -> LayeredStore:
    return LayeredStore(tmp_path / name / "cache", shared)


def test_lru_pruning_removes_the_least_recently_used_first_and_keeps_the_bound(tmp_path):
    shared = SharedCache(tmp_path / "shared", max_size=10**9)
    store = _layered(tmp_path, "a", shared)
    for i, key in enumerate(["k0", "k1", "k2"]):
        _entry(store, key, value=i)
        os.utime(shared.root / "features" / key / ".used", (1000 + i, 1000 + i))
    # a read (from another folder) refreshes k0: it is now the most recently used
    other = _layered(tmp_path, "b", shared)
    assert other.load("features", "k0") is not None
    assert other.from_shared == ["features/k0"]
    sizes = {e.key: e.size for e in shared.entries()}
    bound = sizes["k0"] + sizes["k2"]
    removed = shared.prune(bound)
    assert [e.key for e in removed] == ["k1"]
    assert sum(e.size for e in shared.entries()) <= bound
    # the folders' own entries are never touched by pruning
    assert store.load("features", "k1") is not None
    # writing with a small bound prunes after the write
    small = SharedCache(shared.root, max_size=sizes["k0"] + 10)
    _entry(_layered(tmp_path, "c", small), "k3", value=3)
    assert [e.key for e in small.entries()] == ["k3"]


def test_an_entry_larger_than_the_bound_is_not_shared(tmp_path):
    shared = SharedCache(tmp_path / "shared", max_size=100)
    store = _layered(tmp_path, "a", shared)
    _entry(store, "big")
    assert shared.entries() == [] and store.load("features", "big") is not None


def test_corrupt_shared_entry_is_a_warning_recomputed_and_replaced(tmp_path, caplog):
    shared = SharedCache(tmp_path / "shared", max_size=10**9)
    # copied, not linked, so that corrupting the shared file leaves the first folder's intact
    other = tmp_path / "copied"
    _entry(ArrayStore(other), "k")
    assert shared.publish("features", "k", other / "features" / "k")
    values = shared.root / "features" / "k" / "values.npy"
    values.write_bytes(values.read_bytes()[:-8] + b"\x00" * 8)
    caplog.set_level(logging.INFO, logger="sing_audit")
    store = _layered(tmp_path, "b", shared)
    assert store.load("features", "k") is None
    assert any("shared cache entry features/k" in r.getMessage() and "is corrupt (digest mismatch in values.npy)" in r.getMessage()
               for r in caplog.records)
    assert not (shared.root / "features" / "k").exists()  # moved aside, never trusted
    assert not list((tmp_path / "b" / "cache" / "features").iterdir())  # nothing half-linked left
    _entry(store, "k")  # the run recomputes it: the shared entry is replaced by a valid one
    assert _layered(tmp_path, "c", shared).load("features", "k") is not None


def test_vanished_entry_during_linking_is_a_miss(tmp_path, monkeypatch):
    import sing_audit.pipeline.shared_cache as sc

    shared = SharedCache(tmp_path / "shared", max_size=10**9)
    _entry(_layered(tmp_path, "a", shared), "k")
    real = sc._link_or_copy
    calls = []

    def pruned_meanwhile(src, dst):
        if not calls:
            shared.prune(0)  # another process prunes everything while we link
        calls.append(src)
        return real(src, dst)

    monkeypatch.setattr(sc, "_link_or_copy", pruned_meanwhile)
    store = _layered(tmp_path, "b", shared)
    assert store.load("features", "k") is None
    assert store.from_shared == []


def test_partial_and_shard_entries_stay_in_the_folder(tmp_path):
    from sing_audit.pipeline.cache import PartialEntry

    shared = SharedCache(tmp_path / "shared", max_size=10**9)
    store = _layered(tmp_path, "a", shared)
    store.save("features-shards", "k.shard-0-of-2", {"values": np.zeros((2, 2), np.float32)})
    sink = PartialEntry(store, "features", "k", 4, "float32", {"batch_size": 2})
    sink.write(np.arange(2), np.ones((2, 3), np.float32))
    sink.commit(2)
    assert shared.entries() == []  # neither the shard nor the partial rows
    sink.write(np.arange(2, 4), np.ones((2, 3), np.float32))
    sink.finalize({}, {})
    assert [(e.kind, e.key) for e in shared.entries()] == [("features", "k")]


def _writer(root: str, folder: str, keys: list[str], bound: int, rounds: int) -> None:
    shared = SharedCache(Path(root), max_size=bound)
    for r in range(rounds):
        store = LayeredStore(Path(folder) / f"r{r}" / "cache", shared)
        for key in keys:
            hit = store.load("features", key)
            if hit is None:
                _entry(store, key, n=2000, value=float(int(key[1:])))
            else:
                assert float(np.asarray(hit[0]["values"])[0]) == float(int(key[1:]))
        shared.prune()


def test_two_processes_writing_reading_and_pruning_the_same_entries(tmp_path):
    root = tmp_path / "shared"
    keys = [f"k{i}" for i in range(8)]
    one = len(np.full(2000, 1, np.float32).tobytes()) + 400
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(root), str(tmp_path / f"p{i}"), keys[i::1] if i == 0 else keys[::-1], 5 * one, 3))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    shared = SharedCache(root, max_size=5 * one)
    entries = shared.entries()
    assert sum(e.size for e in entries) <= 5 * one
    # every surviving entry is valid, and no temporary folder is left behind
    for e in entries:
        assert ArrayStore(root).load("features", e.key) is not None
    assert not [p for p in (root / "features").iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- the command


def test_cache_info_prune_clear(tmp_path, capsys, monkeypatch):
    root = tmp_path / "shared"
    shared = SharedCache(root, max_size=10**9)
    root.mkdir()
    shared.check_ours()
    store = _layered(tmp_path, "a", shared)
    for i in range(3):
        _entry(store, f"k{i}", value=i)
        os.utime(root / "features" / f"k{i}" / ".used", (1000 + i, 1000 + i))
    store.save("text", "t", {"values": np.zeros(3)})
    monkeypatch.setenv(CACHE_DIR_ENV, str(root))
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(root) in out and f"{CACHE_DIR_ENV} in the environment" in out
    assert "features" in out and "3 entries" in out and "text" in out and "1 entry" in out
    assert "bound 10.0GiB" in out and "oldest use 1970-01-01" in out

    assert main(["cache", "prune", "--max-size", "5KB"]) == 0
    out = capsys.readouterr().out
    assert "removed features/k0" in out and "removed features/k1" in out and "k2" not in out
    assert main(["cache", "prune", "--max-size", "lots"]) == 2
    assert "not a size" in capsys.readouterr().err

    # not on a terminal, clear without --yes refuses (exit 2) and removes nothing
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["cache", "clear"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert len(shared.entries()) == 2
    assert main(["cache", "clear", "--yes", "--cache-dir", str(root)]) == 0
    assert "removed 2 entries" in capsys.readouterr().out
    assert shared.entries() == [] and (root / TAG_NAME).is_file()
    assert store.load("features", "k0") is not None  # the output folder's own cache stays


def test_cache_command_off_and_foreign_folders(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, "off")
    assert main(["cache", "info"]) == 0
    assert "off" in capsys.readouterr().out
    assert main(["cache", "prune"]) == 2
    assert "is off" in capsys.readouterr().err
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    assert main(["cache", "clear", "--yes", "--cache-dir", str(home)]) == 2
    assert "is not a sing-audit cache" in capsys.readouterr().err
    assert (home / "notes.txt").is_file()
    assert main(["cache", "info", "--cache-dir", str(tmp_path / "new")]) == 0
    assert "not created yet" in capsys.readouterr().out
    # a size that is not one is refused before anything is looked at, cache or none
    assert main(["cache", "prune", "--max-size", "banana", "--cache-dir", str(tmp_path / "new")]) == 2
    assert "not a size" in capsys.readouterr().err


def test_clear_never_follows_symlinks_out_of_the_cache(tmp_path, monkeypatch, capsys):
    root = tmp_path / "shared"
    shared = SharedCache(root, max_size=10**9)
    root.mkdir()
    shared.check_ours()
    _entry(_layered(tmp_path, "a", shared), "k")
    precious = tmp_path / "precious"
    (precious / "deep").mkdir(parents=True)
    (precious / "deep" / "meta.json").write_text("{}")
    (root / "features" / "link").symlink_to(precious / "deep")
    (root / "kindlink").symlink_to(precious)
    assert [e.key for e in shared.entries()] == ["k"]
    assert main(["cache", "clear", "--yes", "--cache-dir", str(root)]) == 0
    assert (precious / "deep" / "meta.json").is_file()


def test_an_entry_the_run_removes_leaves_the_shared_cache_too(tmp_path):
    """Text chunks are removed once their ensemble is stored: no copy of them lingers."""
    shared = SharedCache(tmp_path / "shared", max_size=10**9)
    store = _layered(tmp_path, "a", shared)
    store.save("text-chunks", "c", {"values": np.ones((2, 3))})
    assert shared.has("text-chunks", "c")
    store.remove("text-chunks", "c")
    assert not shared.has("text-chunks", "c") and store.load("text-chunks", "c") is None


def test_a_folder_entry_from_before_is_shared_when_read(tmp_path):
    _entry(ArrayStore(tmp_path / "old" / "cache"), "k")
    shared = SharedCache(tmp_path / "shared", max_size=10**9)
    assert _layered(tmp_path, "old", shared).load("features", "k") is not None
    assert shared.has("features", "k")


def test_clear_asks_on_a_terminal(tmp_path, monkeypatch, capsys):
    root = tmp_path / "shared"
    shared = open_shared_cache(cache_setting(root, None, {}))
    _entry(_layered(tmp_path, "a", shared), "k")
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    answers = iter(["n", "yes"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    assert "nothing removed" in capsys.readouterr().out and shared.has("features", "k")
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    assert "removed 1 entry" in capsys.readouterr().out and not shared.has("features", "k")


@pytest.fixture(scope="module")
def cache_dir_at_module_setup():
    return os.environ.get(CACHE_DIR_ENV)


def test_the_shared_cache_is_off_before_module_fixtures_run(cache_dir_at_module_setup):
    """Module-scoped fixtures run audits before any function-scoped fixture (tests/test_shard.py)."""
    assert cache_dir_at_module_setup == "off"


def test_name_lists_and_entries_share_the_folder(tmp_path, monkeypatch):
    """validate writes the model libraries' name lists before any audit stores an entry:
    the folder they create is tagged as sing-audit's, so the shared cache then opens it
    (it refused an untagged non-empty folder), and names/ is never taken for an entry kind."""
    from sing_audit.name_lists import library_value

    root = tmp_path / "machine"
    monkeypatch.setenv(CACHE_DIR_ENV, str(root))
    assert library_value("numpy", "answer", lambda: [1, 2]) == [1, 2]
    assert (root / "names").is_dir() and (root / TAG_NAME).is_file()
    shared = SharedCache(root, max_size=10**9)
    shared.check_ours()  # would raise "holds files and is not a sing-audit cache"
    store = _layered(tmp_path, "a", shared)
    _entry(store, "k0", value=0)
    assert [(e.kind, e.key) for e in shared.entries()] == [("features", "k0")]
    assert shared.prune(1) and (root / "names").is_dir()  # pruning never takes the name lists
    shared.clear()
    assert not (root / "names").exists()  # clear takes them (rebuilt on first use)


def test_name_lists_are_not_written_into_someone_elses_folder(tmp_path, monkeypatch):
    from sing_audit.name_lists import library_value

    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    monkeypatch.setenv(CACHE_DIR_ENV, str(home))
    assert library_value("numpy", "answer", lambda: [3]) == [3]
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt"]
