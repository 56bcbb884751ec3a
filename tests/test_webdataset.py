"""The ``webdataset`` dataset: tar shards audited like the image folder they were made
from, split over ``--shard`` processes that each read only their own shards' images,
and every malformed or hostile shard refused with a message naming it."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from sing_audit.builtins.webdataset_shards import WebDatasetShards
from sing_audit.cli import main
from sing_audit.errors import DataError
from sing_audit.synthetic import write_image_folder

from .conftest import PIPELINE_POLICY, image_folder_audit

BACKBONES = [{"name": "rn", "plugin": "timm", "model": "resnet18", "weights": "random", "img_size": 32}]
RUN = {"device": "cpu", "folds": 2, "bootstrap": 100, "batch_size": 4}
#: a null space and judged classes, so that the results compared hold IS/AS numbers
EXTRA = {"nullspace": {"rule": "fraction", "null_fraction": 0.25}, "policy": {**PIPELINE_POLICY, "min_images": 3}}
PER_SHARD = 4  # 15 images: shards of 4, 4, 4 and 3; batches of 4, so --shard 0/2 is rows 0-7 = shards 0 and 1


def image_files(root: Path) -> list[str]:
    """The images of an image folder in the order image_folder lists them."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))


def add_member(tf: tarfile.TarFile, name: str, data: bytes, **info) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 1_700_000_000
    for k, v in info.items():
        setattr(ti, k, v)
    tf.addfile(ti, io.BytesIO(data))


def write_shards(folder: Path, root: Path, per_shard: int = PER_SHARD, label=lambda rel: rel.split("/")[0]) -> list[Path]:
    """Shards ``folder/val-000.tar …`` of the image folder ``root``, in its order: the
    member ``<class>/<file>.png`` and its label ``<class>/<file>.cls``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = image_files(root)
    shards = []
    for k in range(0, len(files), per_shard):
        path = folder / f"val-{k // per_shard:03d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
            for rel in files[k : k + per_shard]:
                add_member(tf, rel, (root / rel).read_bytes())
                if label is not None:
                    add_member(tf, rel.rsplit(".", 1)[0] + ".cls", label(rel).encode())
        shards.append(path)
    return shards


def dataset(folder: Path, **options) -> WebDatasetShards:
    return WebDatasetShards({"shards": "val-{000..003}.tar", "base_dir": folder, **options})


def webdataset_audit(tmp_path: Path, root: Path, shards_dir: Path, **dataset_options) -> Path:
    """image_folder_audit's config (same target, backbones, run) with the shards as its dataset."""
    cfg = image_folder_audit(tmp_path, BACKBONES, root=root, run=RUN, per_class=5, **EXTRA)
    data = yaml.safe_load(cfg.read_text())
    rel = os.path.relpath(shards_dir, tmp_path)
    data["dataset"] = {"plugin": "webdataset", "shards": f"{rel}/val-{{000..003}}.tar", **dataset_options}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


def results(run_dir: Path) -> dict:
    data = json.loads((run_dir / "results.json").read_text())
    for key in ("started", "finished", "stage_seconds", "config_dir", "dataset", "config", "config_digest"):
        data["provenance"].pop(key, None)
    return data


def features(run_dir: Path) -> np.ndarray:
    (entry,) = [p for p in (run_dir / "cache" / "features").iterdir() if not p.name.startswith(".")]
    return np.load(entry / "values.npy")


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("wds-images") / "val", per_class=5, size=32)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, image_root):
    """The reference: an image_folder audit of the same images."""
    tmp = tmp_path_factory.mktemp("folder-run")
    cfg = image_folder_audit(tmp, BACKBONES, root=image_root, run=RUN, per_class=5, **EXTRA)
    code = main(["run", str(cfg)])
    assert code in (0, 1)
    assert results(tmp / "out")["models"][0]["is_mean"] > 0  # IS/AS numbers to compare
    return code, tmp / "out"


# --------------------------------------------------------------------------- audits


def test_a_webdataset_audit_equals_the_image_folder_audit(tmp_path, image_root, folder_run):
    write_shards(tmp_path / "shards", image_root)
    cfg = webdataset_audit(tmp_path, image_root, tmp_path / "shards")
    code, reference = folder_run
    assert main(["run", str(cfg)]) == code
    # the same PNG bytes decoded in the same batches: bit-for-bit the same features
    np.testing.assert_array_equal(features(tmp_path / "out"), features(reference))
    assert results(tmp_path / "out") == results(reference)
    provenance = json.loads((tmp_path / "out" / "results.json").read_text())["provenance"]
    assert "webdataset" in json.dumps(provenance)


def _garble_images(shards: list[Path]) -> dict[Path, bytes]:
    """Overwrite every image member's bytes in place (same size, same modification time,
    labels untouched): any process that reads one fails. Returns the originals."""
    saved = {}
    for shard in shards:
        saved[shard] = shard.read_bytes()
        st = shard.stat()
        with tarfile.open(shard) as tf:
            spans = [(m.offset_data, m.size) for m in tf if m.name.endswith(".png")]
        with open(shard, "r+b") as fh:
            for offset, size in spans:
                fh.seek(offset)
                fh.write(b"\xAB" * size)
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    return saved


def _restore(saved: dict[Path, bytes]) -> None:
    for shard, data in saved.items():
        st = shard.stat()
        shard.write_bytes(data)
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_shard_processes_read_only_their_own_tar_files_and_merge_to_one_run(tmp_path, image_root, folder_run, capsys):
    shards = write_shards(tmp_path / "shards", image_root)
    cfg = webdataset_audit(tmp_path, image_root, tmp_path / "shards")
    own = {0: shards[:2], 1: shards[2:]}  # rows 0-7 and 8-14

    saved = _garble_images(own[0])  # the garbling is seen: shard 0 fails on its own garbled images
    assert main(["run", str(cfg), "--shard", "0/2"]) == 2
    assert "n01440764/n01440764_0.png" in capsys.readouterr().err
    _restore(saved)

    for index, other in ((0, own[1]), (1, own[0])):
        saved = _garble_images(other)  # the other process's images are unreadable
        assert main(["run", str(cfg), "--shard", f"{index}/2"]) == 0, capsys.readouterr().err
        _restore(saved)
    code, reference = folder_run
    assert main(["merge", str(cfg)]) == code
    np.testing.assert_array_equal(features(tmp_path / "out"), features(reference))
    assert results(tmp_path / "out") == results(reference)


def test_labels_may_be_head_indices(tmp_path, image_root):
    index = {"n01440764": "0", "n01443537": "1", "n01484850": "2"}
    write_shards(tmp_path, image_root, label=lambda rel: index[rel.split("/")[0]])
    ds = dataset(tmp_path, labels="index")
    ds.check()
    assert ds.class_map() == {"0": 0, "1": 1, "2": 2}
    assert [r.label for r in ds.records()][:6] == ["0"] * 5 + ["1"]
    with pytest.raises(DataError, match="not a head index.*labels: key"):
        write_shards(tmp_path, image_root)  # synset labels
        dataset(tmp_path, labels="index").records()


def test_an_unknown_label_is_refused_before_the_run_with_close_matches(tmp_path, image_root, capsys):
    write_shards(tmp_path / "shards", image_root, label=lambda rel: rel.split("/")[0].replace("n01440764", "n01440765"))
    cfg = webdataset_audit(tmp_path, image_root, tmp_path / "shards")
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "'n01440765' (close: 'n01440764'" in err and "class_map" in err


# --------------------------------------------------------------------------- the cache key


def test_a_rewritten_shard_changes_the_cache_key(tmp_path, image_root):
    shards = write_shards(tmp_path, image_root)
    before = dataset(tmp_path).describe()
    assert dataset(tmp_path).describe() == before  # stable
    with tarfile.open(shards[1]) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf]
    with tarfile.open(shards[1], "w", format=tarfile.PAX_FORMAT) as tf:  # one image replaced, same size
        for m, data in members:
            tf.addfile(m, io.BytesIO(data[::-1] if m.name == members[0][0].name else data))
    assert dataset(tmp_path).describe()["digest"] != before["digest"]


def test_digest_content_sees_a_change_that_keeps_size_and_time(tmp_path, image_root):
    shards = write_shards(tmp_path, image_root)
    headers, content = dataset(tmp_path).describe(), dataset(tmp_path, digest="content").describe()
    _garble_images(shards[:1])
    assert dataset(tmp_path).describe() == headers  # the headers digest reads no image bytes
    assert dataset(tmp_path, digest="content").describe()["digest"] != content["digest"]


# --------------------------------------------------------------------------- errors


def test_a_missing_shard_is_named(tmp_path, image_root):
    write_shards(tmp_path, image_root)
    (tmp_path / "val-002.tar").unlink()
    with pytest.raises(DataError, match=r"1 of 4 shard\(s\) not found: .*val-002\.tar") as exc:
        dataset(tmp_path).check()
    assert exc.value.field == "shards"


@pytest.mark.parametrize("pattern, message", [
    ("val-{000..003.tar", "malformed"),
    ("val-}000.tar", "malformed"),
    ("val-{000..0x3}.tar", "unexpanded"),
])
def test_a_bad_brace_pattern_is_refused(tmp_path, image_root, pattern, message):
    write_shards(tmp_path, image_root)
    with pytest.raises(DataError, match=message):
        WebDatasetShards({"shards": pattern, "base_dir": tmp_path}).check()


def _one_shard(folder: Path, image: bytes, *extra) -> WebDatasetShards:
    path = folder / "bad.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        add_member(tf, "a/ok.png", image)
        add_member(tf, "a/ok.cls", b"n01440764")
        for name, data, info in extra:
            add_member(tf, name, data, **info)
    return WebDatasetShards({"shards": "bad.tar", "base_dir": folder})


@pytest.mark.parametrize("name, info, message", [
    ("/etc/evil.png", {}, "absolute path"),
    ("a/../../evil.png", {}, r"climbs out .*\.\."),
    ("a/link.png", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "is a link"),
    ("a/hard.png", {"type": tarfile.LNKTYPE, "linkname": "a/ok.png"}, "is a link"),
    ("a/dev.png", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, "is a device"),
    ("a/fifo.png", {"type": tarfile.FIFOTYPE}, "is a FIFO"),
])
def test_hostile_members_are_refused(tmp_path, image_root, name, info, message):
    image = (image_root / image_files(image_root)[0]).read_bytes()
    data = b"" if info else image
    ds = _one_shard(tmp_path, image, (name, data, info))
    with pytest.raises(DataError, match=message) as exc:
        ds.records()
    assert "bad.tar" in str(exc.value) and repr(name) in str(exc.value)


def test_a_sample_without_an_image_key_is_refused(tmp_path, image_root):
    image = (image_root / image_files(image_root)[0]).read_bytes()
    ds = _one_shard(tmp_path, image, ("a/other.txt", b"x", {}), ("a/other.cls", b"n01440764", {}))
    with pytest.raises(DataError, match=r"sample 'a/other' has no image under the keys jpg, jpeg, png, webp "
                                        r"\(it has: cls, txt\); set the dataset's image_key"):
        ds.records()
    assert len(WebDatasetShards({"shards": "bad.tar", "base_dir": tmp_path, "image_key": ["png", "txt"]}).records()) == 2


def test_a_key_in_two_shards_is_refused(tmp_path, image_root):
    write_shards(tmp_path, image_root)
    first = image_files(image_root)[0]
    with tarfile.open(tmp_path / "val-004.tar", "w") as tf:
        add_member(tf, first, (image_root / first).read_bytes())
    with pytest.raises(DataError, match="in two shards"):
        WebDatasetShards({"shards": "val-{000..004}.tar", "base_dir": tmp_path}).records()


def test_corrupt_shards_are_named(tmp_path, image_root):
    shards = write_shards(tmp_path, image_root)
    good = shards[2].read_bytes()

    shards[2].write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(DataError, match=r"val-002\.tar is not a tar file or is corrupt"):
        dataset(tmp_path).records()

    damaged = bytearray(good)  # the third member's header overwritten: tarfile alone would stop there silently
    with tarfile.open(fileobj=io.BytesIO(good)) as tf:
        third = list(tf)[2].offset
    damaged[third : third + 100] = b"\x07" * 100
    shards[2].write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=rf"val-002\.tar is corrupt: a damaged tar header at byte {third:,}"):
        dataset(tmp_path).records()

    with tarfile.open(fileobj=io.BytesIO(good)) as tf:
        members = list(tf)
    for cut, where in ((members[2].offset, "after a member"), (members[2].offset_data + 10, "inside a member")):
        shards[2].write_bytes(good[:cut])
        with pytest.raises(DataError, match=r"val-002\.tar is truncated"):
            dataset(tmp_path).records()

    import gzip

    shards[2].write_bytes(gzip.compress(good))
    with pytest.raises(DataError, match=r"val-002\.tar is a compressed tar.*decompress"):
        dataset(tmp_path).records()


def test_a_corrupt_image_member_is_a_bad_image(tmp_path, image_root):
    image = (image_root / image_files(image_root)[0]).read_bytes()
    ds = _one_shard(tmp_path, image[:40])
    (record,) = ds.records()
    with pytest.raises(DataError, match="a/ok.png"):
        ds.open(record)


def test_without_the_library_the_extra_is_named(tmp_path, image_root, monkeypatch, capsys):
    write_shards(tmp_path / "shards", image_root)
    cfg = webdataset_audit(tmp_path, image_root, tmp_path / "shards")
    monkeypatch.setitem(sys.modules, "webdataset.tariterators", None)  # as if not installed
    assert main(["validate", str(cfg)]) == 2
    assert "pip install 'sing-audit[webdataset]'" in capsys.readouterr().err


def test_a_label_member_that_is_no_label_is_refused(tmp_path, image_root):
    image = (image_root / image_files(image_root)[0]).read_bytes()
    with pytest.raises(DataError, match=r"label of sample 'a/big' .* is 5,000 bytes, not a label; set label_key"):
        _one_shard(tmp_path, image, ("a/big.png", image, {}), ("a/big.cls", b"x" * 5000, {})).records()
    with pytest.raises(DataError, match=r"label of sample 'a/bin' .* is not UTF-8 text"):
        _one_shard(tmp_path, image, ("a/bin.png", image, {}), ("a/bin.cls", b"\xff\xfe", {})).records()


# --------------------------------------------------------------------------- the shard index


@pytest.fixture
def opened(monkeypatch):
    """Every tar file opened from now on (by builtins.open, io.open, os.open or tarfile)."""
    paths: list[str] = []

    def record(name):
        if isinstance(name, (str, os.PathLike)) and os.fspath(name).endswith(".tar"):
            paths.append(Path(os.fspath(name)).name)

    def wrap(fn):
        def opener(file, *args, **kwargs):
            record(file)
            return fn(file, *args, **kwargs)
        return opener

    import builtins

    for owner, name in ((builtins, "open"), (io, "open"), (os, "open"), (tarfile, "bltn_open")):
        monkeypatch.setattr(owner, name, wrap(getattr(owner, name)))
    original = tarfile.open

    def tar_open(name=None, *args, **kwargs):
        record(name)
        fileobj = kwargs.get("fileobj")
        if fileobj is not None:
            record(getattr(fileobj, "name", None))
        return original(name, *args, **kwargs)

    monkeypatch.setattr(tarfile, "open", tar_open)
    return paths


def indexed_audit(tmp_path: Path, image_root: Path) -> tuple[Path, list[Path]]:
    """The shards, an audit config with ``index: shards/index.json``, and the index
    written by ``sing-audit index-shards``."""
    shards = write_shards(tmp_path / "shards", image_root)
    cfg = webdataset_audit(tmp_path, image_root, tmp_path / "shards", index="shards/index.json")
    assert main(["index-shards", str(cfg)]) == 0
    return cfg, shards


def test_an_index_gives_the_header_listing_records_and_cache_key_without_opening_a_tar(tmp_path, image_root, opened):
    shards = write_shards(tmp_path, image_root)
    from sing_audit.builtins.webdataset_index import write_index

    write_index(dataset(tmp_path), tmp_path / "index.json")
    for options in ({}, {"limit_per_class": 2}, {"classes": ["n01443537"]}):
        headers = dataset(tmp_path, **options)
        expected = headers.records(), headers.describe()
        assert opened  # the header listing opens the tar files
        opened.clear()
        indexed = dataset(tmp_path, index="index.json", **options)
        assert (indexed.records(), indexed.describe()) == expected  # the same records and cache key
        assert opened == []  # listing and the cache key: the shards were only stat()ed
        assert indexed._members == headers._members
        record = indexed.records()[-1]
        np.testing.assert_array_equal(np.asarray(indexed.open(record)), np.asarray(headers.open(record)))
        assert set(opened) == {record.path.name}
        opened.clear()
    assert {r.path for r in dataset(tmp_path, index="index.json").records()} == set(shards)


def test_with_an_index_shard_processes_open_only_their_own_tar_files(tmp_path, image_root, folder_run, opened, capsys):
    cfg, shards = indexed_audit(tmp_path, image_root)
    own = {0: {s.name for s in shards[:2]}, 1: {s.name for s in shards[2:]}}  # rows 0-7 and 8-14
    for index in (0, 1):
        opened.clear()
        assert main(["run", str(cfg), "--shard", f"{index}/2"]) == 0, capsys.readouterr().err
        assert set(opened) == own[index]
    code, reference = folder_run
    assert main(["merge", str(cfg)]) == code
    np.testing.assert_array_equal(features(tmp_path / "out"), features(reference))
    assert results(tmp_path / "out") == results(reference)

    # the recording sees opens: without the index, a process lists every shard's headers
    data = yaml.safe_load(cfg.read_text())
    del data["dataset"]["index"]
    data["output"] = "out-headers"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    opened.clear()
    assert main(["run", str(cfg), "--shard", "0/2"]) == 0
    assert set(opened) == {s.name for s in shards}


def test_an_audit_with_the_index_equals_one_without(tmp_path, image_root, folder_run):
    cfg, _ = indexed_audit(tmp_path, image_root)
    code, reference = folder_run
    assert main(["run", str(cfg)]) == code
    np.testing.assert_array_equal(features(tmp_path / "out"), features(reference))
    assert results(tmp_path / "out") == results(reference)


def test_a_stale_index_is_refused_with_the_command_that_rebuilds_it(tmp_path, image_root, capsys):
    cfg, shards = indexed_audit(tmp_path, image_root)
    capsys.readouterr()
    with tarfile.open(shards[1]) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf]
    with tarfile.open(shards[1], "w", format=tarfile.PAX_FORMAT) as tf:  # rewritten: one label changed
        for m, data in members:
            tf.addfile(m, io.BytesIO(b"n01443537" if m.name.endswith(".cls") and data == b"n01440764" else data))
    os.utime(shards[1], ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "val-001.tar changed since the shard index" in err and "sing-audit index-shards CONFIG --force" in err
    assert main(["index-shards", str(cfg)]) == 2  # the old index is not replaced silently
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["index-shards", str(cfg), "--force"]) == 0
    assert main(["validate", str(cfg)]) == 0
    options = {"shards": "shards/val-{000..003}.tar", "base_dir": tmp_path}
    indexed = WebDatasetShards({**options, "index": "shards/index.json"})
    assert indexed.records() == WebDatasetShards(options).records()
    assert "n01443537" in [r.label for r in indexed.records() if r.path == shards[1]]  # the new label


def _edit_index(folder: Path, edit) -> WebDatasetShards:
    from sing_audit.builtins.webdataset_index import write_index

    path = folder / "index.json"
    write_index(dataset(folder), path, force=True)
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    return dataset(folder, index="index.json")


def _sample(doc, shard=0, k=0) -> dict:
    return doc["shards"][shard]["samples"][k]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["shards"].pop(), r"the shard 'val-003\.tar' the pattern names is not in the index"),
    (lambda d: d["shards"].append(dict(d["shards"][0], path="val-004.tar")), r"lists 'val-004\.tar', which the shards"),
    (lambda d: d["shards"].reverse(), r"shard 0 is 'val-003\.tar' in the index but 'val-000\.tar'"),
    (lambda d: d["shards"][0].update(path="../val-000.tar"), r"shard 0 is '\.\./val-000\.tar' in the index"),
    (lambda d: d.update(label_key="txt"), "written with label_key: 'txt', the dataset has label_key: 'cls'"),
    (lambda d: d.update(format="something else"), "not a sing-audit shard index"),
    (lambda d: d.update(version=2), "version 2"),
    (lambda d: _sample(d).update(offset=10**9), r"lies at bytes 1000000000 \+ \d+, not inside the shard"),
    (lambda d: _sample(d).update(offset=-512), r"lies at bytes -512"),
    (lambda d: _sample(d).update(size=-1), r"lies at bytes \d+ \+ -1"),
    (lambda d: _sample(d).update(offset=True), r"lies at bytes True"),
    (lambda d: _sample(d).update(image="../../etc/passwd.png", key="../../etc/passwd"), r"climbs out .*'\.\.'"),
    (lambda d: _sample(d).update(image="/etc/passwd.png", key="/etc/passwd"), "absolute path"),
    (lambda d: _sample(d).update(image="n01440764/other.png"), "is not an image member of the sample"),
    (lambda d: _sample(d).update(image=_sample(d)["key"] + ".cls"), "is not an image member of the sample"),
    (lambda d: _sample(d, k=1).update(_sample(d)), "listed twice"),
    (lambda d: _sample(d).update(label=["n01440764"]), "is not a label"),
    (lambda d: _sample(d).update(extra=1), "not an object with exactly key, image, offset, size, label"),
    (lambda d: d["shards"][0].update(size="big"), "size, mtime_ns or listing missing"),
])
def test_a_wrong_or_hostile_index_is_refused(tmp_path, image_root, edit, message):
    write_shards(tmp_path, image_root)
    ds = _edit_index(tmp_path, edit)
    with pytest.raises(DataError, match=message) as exc:
        ds.records()
    assert exc.value.field == "index" and "index.json" in str(exc.value)


def test_an_index_for_another_pattern_is_refused(tmp_path, image_root):
    write_shards(tmp_path, image_root)
    _edit_index(tmp_path, lambda d: None)
    with pytest.raises(DataError, match=r"it is for other shards than val-\{000\.\.002\}\.tar"):
        WebDatasetShards({"shards": "val-{000..002}.tar", "base_dir": tmp_path, "index": "index.json"}).records()
    with pytest.raises(DataError, match=r"shard index .*nothere\.json not found; write it: sing-audit index-shards"):
        dataset(tmp_path, index="nothere.json").records()
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json cannot be read"):
        dataset(tmp_path, index="broken.json").records()


def test_index_shards_refuses_bad_input(tmp_path, image_root, capsys):
    shards = write_shards(tmp_path / "shards", image_root)
    cfg = webdataset_audit(tmp_path, image_root, tmp_path / "shards")
    assert main(["index-shards", str(cfg)]) == 2  # neither -o nor dataset.index
    assert "give -o FILE, or set dataset.index" in capsys.readouterr().err
    assert main(["index-shards", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "i.json")]) == 2
    assert main(["index-shards", str(cfg), "-o", str(tmp_path / "nofolder" / "i.json")]) == 2
    assert "does not exist" in capsys.readouterr().err

    (tmp_path / "folder").mkdir()
    folder_cfg = image_folder_audit(tmp_path / "folder", BACKBONES, root=image_root, run=RUN)
    assert main(["index-shards", str(folder_cfg), "-o", str(tmp_path / "i.json")]) == 2
    assert "the config has dataset plugin 'image_folder'" in capsys.readouterr().err

    good = shards[2].read_bytes()  # the listing's checks: a corrupt shard writes no index
    shards[2].write_bytes(good[: len(good) // 2])
    assert main(["index-shards", str(cfg), "-o", str(tmp_path / "i.json")]) == 2
    assert "val-002.tar is truncated" in capsys.readouterr().err
    assert not (tmp_path / "i.json").exists() and not list(tmp_path.glob(".i.json.*"))
    shards[2].write_bytes(good)

    assert main(["index-shards", str(cfg), "-o", str(tmp_path / "i.json")]) == 0
    out = capsys.readouterr().out
    assert "4 shard(s), 15 sample(s)" in out and "dataset.index: i.json" in out
    doc = json.loads((tmp_path / "i.json").read_text())
    assert [s["path"] for s in doc["shards"]] == [f"shards/val-{k:03d}.tar" for k in range(4)]


def test_index_shards_refuses_a_hostile_shard(tmp_path, image_root, capsys):
    image = (image_root / image_files(image_root)[0]).read_bytes()
    _one_shard(tmp_path, image, ("a/../../evil.png", image, {}))
    cfg = tmp_path / "audit.yaml"
    data = yaml.safe_load(image_folder_audit(tmp_path, BACKBONES, root=image_root, run=RUN).read_text())
    data["dataset"] = {"plugin": "webdataset", "shards": "bad.tar"}
    cfg.write_text(yaml.safe_dump(data))
    assert main(["index-shards", str(cfg), "-o", str(tmp_path / "i.json")]) == 2
    assert "climbs out of the archive" in capsys.readouterr().err
    assert not (tmp_path / "i.json").exists()
