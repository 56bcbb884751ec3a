"""image_folder and image_list datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from sing_audit.components import ImageDataset, ImageRecord
from sing_audit.errors import DataError
from sing_audit.builtins import image_datasets as ids
from sing_audit.builtins.image_datasets import ImageFolderDataset, ImageListDataset, load_mapping_file


def _img(path: Path, color=(10, 20, 30), fmt: str | None = None, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 6), color if mode == "RGB" else 128).save(path, format=fmt)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """root/{cat,dog,zebra_fish}/..., plus things that must be ignored."""
    root = tmp_path_factory.mktemp("folder") / "data"
    _img(root / "cat" / "b.png", (1, 1, 1))
    _img(root / "cat" / "a.jpg", (2, 2, 2))
    _img(root / "cat" / "C.JPEG", (3, 3, 3), fmt="JPEG")
    _img(root / "dog" / "x.webp", (4, 4, 4))
    _img(root / "dog" / "sub" / "y.bmp", (5, 5, 5))
    _img(root / "dog" / "g.gif", mode="L")
    _img(root / "zebra_fish" / "z.tiff", (6, 6, 6))
    (root / "cat" / "notes.txt").write_text("not an image")
    _img(root / "cat" / ".hidden.png")
    _img(root / ".cache" / "q.png")
    _img(root / "loose.png")  # not in a class folder
    return root


def _ds(cls=ImageFolderDataset, **options):
    return cls(cls.Options(**options))


# --------------------------------------------------------------------------- image_folder


def test_records_sorted_and_filtered(folder):
    ds = _ds(root=folder)
    assert isinstance(ds, ImageDataset)
    recs = ds.records()
    assert [r.image_id for r in recs] == [
        "cat/C.JPEG",
        "cat/a.jpg",
        "cat/b.png",
        "dog/g.gif",
        "dog/sub/y.bmp",
        "dog/x.webp",
        "zebra_fish/z.tiff",
    ]
    assert [r.label for r in recs] == ["cat"] * 3 + ["dog"] * 3 + ["zebra_fish"]
    assert all(r.path == folder / r.image_id and r.path.is_file() for r in recs)
    assert ds.labels() == ["cat", "dog", "zebra_fish"]
    assert ds.records() == recs  # deterministic, cached


def test_classes_keeps_only_the_named_labels(folder):
    recs = _ds(root=folder, classes=["zebra_fish", "cat"], limit_per_class=2).records()
    assert [r.image_id for r in recs] == ["cat/C.JPEG", "cat/a.jpg", "zebra_fish/z.tiff"]
    assert _ds(root=folder, classes=["dog"]).labels() == ["dog"]
    # which images are kept keys the cache: the description says so
    assert _ds(root=folder, classes=["dog"]).describe()["options"]["classes"] == ["dog"]
    assert "classes" not in _ds(root=folder).describe()["options"]


def test_classes_the_data_lacks_are_an_error(folder):
    with pytest.raises(DataError, match="no images of n01440764, horse"):
        _ds(root=folder, classes=["cat", "n01440764", "horse"]).records()


def test_limit_per_class(folder):
    recs = _ds(root=folder, limit_per_class=2).records()
    assert [r.image_id for r in recs] == ["cat/C.JPEG", "cat/a.jpg", "dog/g.gif", "dog/sub/y.bmp", "zebra_fish/z.tiff"]


def test_custom_extensions(folder):
    recs = _ds(root=folder, extensions=[".PNG", "jpg", "jpeg", "webp", "bmp", "gif", "tiff"]).records()
    assert "cat/b.png" in {r.image_id for r in recs}
    with pytest.raises(DataError, match="zebra_fish"):
        _ds(root=folder, extensions=["png", "jpg", "jpeg", "webp", "gif"]).records()
    with pytest.raises(ValidationError):
        _ds(root=folder, extensions=[])


def test_open_returns_rgb(folder):
    ds = _ds(root=folder)
    img = ds.open(next(r for r in ds.records() if r.image_id == "dog/g.gif"))
    assert img.mode == "RGB" and img.size == (8, 6)


def test_relative_root_uses_base_dir(folder):
    ds = _ds(root=Path("data"), base_dir=folder.parent)
    assert ds.root == folder.resolve()
    assert len(ds.records()) == 7


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        _ds(root=tmp_path / "nope").records()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        _ds(root=tmp_path / "empty").records()
    _img(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="image_list"):
        _ds(root=tmp_path / "flat").records()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        _ds(root=tmp_path / "file.txt").records()


def test_class_folder_without_images(tmp_path):
    _img(tmp_path / "r" / "a" / "1.png")
    (tmp_path / "r" / "b").mkdir()
    (tmp_path / "r" / "b" / "readme.md").write_text("x")
    with pytest.raises(DataError) as err:
        _ds(root=tmp_path / "r").records()
    assert str(tmp_path / "r" / "b") in str(err.value) and "no images" in str(err.value)


def test_constructor_does_no_io(tmp_path):
    ds = _ds(root=tmp_path / "does-not-exist-yet")  # errors come from records(), not __init__
    assert ds.on_bad_image == "fail"


@pytest.fixture
def corrupt(tmp_path) -> Path:
    root = tmp_path / "c"
    _img(root / "ok" / "good.png")
    (root / "ok" / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def test_corrupt_image_fail(corrupt):
    ds = _ds(root=corrupt)
    bad = next(r for r in ds.records() if r.image_id == "ok/bad.jpg")
    with pytest.raises(DataError) as err:
        ds.open(bad)
    assert "ok/bad.jpg" in str(err.value)


def test_corrupt_image_skip(corrupt):
    ds = _ds(root=corrupt, on_bad_image="skip")
    assert ds.on_bad_image == "skip"
    recs = ds.records()
    assert [r.image_id for r in recs] == ["ok/bad.jpg", "ok/good.png"]  # listed; the runner skips it
    with pytest.raises(DataError, match="ok/bad.jpg"):
        ds.open(recs[0])
    assert ds.open(recs[1]).mode == "RGB"


def test_on_bad_image_choices(folder):
    with pytest.raises(ValidationError):
        _ds(root=folder, on_bad_image="ignore")


# --------------------------------------------------------------------------- describe


def test_describe_digest(tmp_path, folder):
    root = tmp_path / "copy"
    shutil.copytree(folder, root)
    d1 = _ds(root=root).describe()
    assert json.loads(json.dumps(d1)) == d1
    assert d1["plugin"] == "image_folder" and d1["root"] == str(root.resolve())
    assert d1["num_images"] == 7 and d1["num_labels"] == 3
    assert d1["digest"].startswith("sha256:")
    assert d1["options"]["on_bad_image"] == "fail" and d1["options"]["limit_per_class"] is None
    assert "base_dir" not in d1["options"]
    assert _ds(root=root).describe()["digest"] == d1["digest"]
    # the digest is about content, ids and labels
    _img(root / "cat" / "a.jpg", (9, 9, 9))
    d2 = _ds(root=root).describe()
    assert d2["digest"] != d1["digest"]
    (root / "cat" / "a.jpg").rename(root / "cat" / "a2.jpg")
    assert _ds(root=root).describe()["digest"] != d2["digest"]
    assert _ds(root=root, limit_per_class=1).describe()["digest"] != _ds(root=root).describe()["digest"]


def test_digest_matches_definition(folder):
    import hashlib

    ds = _ds(root=folder)
    h = hashlib.sha256()
    for r in ds.records():
        file_hash = hashlib.sha256(r.path.read_bytes()).hexdigest()
        h.update(json.dumps([r.image_id, r.label, file_hash]).encode() + b"\n")
    assert ds.describe()["digest"] == "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------- class_map / class_names


def test_class_map_inline(folder):
    ds = _ds(root=folder, class_map={"cat": 3, "dog": 5, "zebra_fish": 1}, class_names={"zebra_fish": "zebrafish"})
    assert ds.class_map() == {"cat": 3, "dog": 5, "zebra_fish": 1}
    assert ds.class_names() == {"zebra_fish": "zebrafish"}
    assert ds.describe()["options"]["class_map"] == {"cat": 3, "dog": 5, "zebra_fish": 1}


def test_no_maps(folder):
    ds = _ds(root=folder)
    assert ds.class_map() is None and ds.class_names() is None


@pytest.mark.parametrize(
    "name, text",
    [
        ("map.json", '{"cat": 3, "dog": 5}'),
        ("map_list.json", '["x", "y", "y2", "cat", "z", "dog"]'),
        ("map.yaml", "cat: 3\ndog: 5\n"),
        ("map.csv", "label,index\ncat,3\ndog,5\n"),
        ("map_noheader.csv", "cat,3\ndog,5\n"),
    ],
)
def test_class_map_files(name, text, tmp_path, folder):
    (tmp_path / name).write_text(text)
    ds = _ds(root=folder, class_map=Path(name), base_dir=tmp_path)
    cm = ds.class_map()
    assert cm["cat"] == 3 and cm["dog"] == 5


def test_class_names_files(tmp_path, folder):
    (tmp_path / "names.csv").write_text("folder,name\ncat,house cat\nzebra_fish,zebrafish\n")
    (tmp_path / "names.yml").write_text("cat: house cat\n")
    assert _ds(root=folder, class_names=tmp_path / "names.csv").class_names() == {
        "cat": "house cat",
        "zebra_fish": "zebrafish",
    }
    assert _ds(root=folder, class_names=tmp_path / "names.yml").class_names() == {"cat": "house cat"}


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("bad2.json", '{"cat": "three"}', "not a head index"),
        ("bad3.json", '"cat"', "mapping"),
        ("dup.csv", "cat,1\ncat,2\n", "twice"),
        ("short.csv", "label,index\ncat\n", "two columns"),
        ("empty.json", "{}", "empty"),
        ("map.toml", "cat = 1", ".json"),
    ],
)
def test_bad_mapping_files(name, text, match, tmp_path):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=match):
        load_mapping_file(tmp_path / name, values="int")


def test_missing_mapping_file(tmp_path, folder):
    with pytest.raises(DataError, match="not found"):
        _ds(root=folder, class_map=Path("nope.json"), base_dir=tmp_path).class_map()


# --------------------------------------------------------------------------- image_list


@pytest.fixture(scope="module")
def listed(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("list")
    for i, name in enumerate(["a.png", "sub/b.jpg", "c.png", "d.png", "e.png"]):
        _img(base / "imgs" / name, (i, i, i))
    (base / "imgs" / "list.csv").write_text(
        "path,label\na.png,cat\nsub\\b.jpg,dog\nc.png,cat\nd.png,\ne.png,cat\n", encoding="utf-8"
    )
    (base / "outside.csv").write_text("path\nimgs/a.png\nimgs/c.png\n")
    return base


def test_image_list_relative_to_csv(listed):
    ds = _ds(ImageListDataset, csv=listed / "imgs" / "list.csv")
    recs = ds.records()
    assert [(r.image_id, r.label) for r in recs] == [
        ("a.png", "cat"),
        ("sub/b.jpg", "dog"),
        ("c.png", "cat"),
        ("d.png", None),
        ("e.png", "cat"),
    ]
    assert all(r.path.is_file() for r in recs)
    assert ds.open(recs[1]).mode == "RGB"
    d = ds.describe()
    assert d["plugin"] == "image_list" and d["num_images"] == 5 and d["root"] == str((listed / "imgs").resolve())
    assert d["csv"] == str((listed / "imgs" / "list.csv").resolve())


def test_image_list_without_labels_and_root(listed):
    ds = _ds(ImageListDataset, csv=Path("outside.csv"), base_dir=listed)
    assert [(r.image_id, r.label) for r in ds.records()] == [("imgs/a.png", None), ("imgs/c.png", None)]


def test_image_list_with_root(listed, tmp_path):
    (tmp_path / "l.csv").write_text("path,label\nsub/b.jpg,dog\n" + f"{listed / 'imgs' / 'a.png'},cat\n")
    ds = _ds(ImageListDataset, csv=Path("l.csv"), root=Path("imgs"), base_dir=listed)
    with pytest.raises(DataError, match="not found"):
        ds.records()  # root is relative to base_dir, the CSV too
    ds = _ds(ImageListDataset, csv=tmp_path / "l.csv", root=Path("imgs"), base_dir=listed)
    recs = ds.records()
    assert [(r.image_id, r.label) for r in recs] == [("sub/b.jpg", "dog"), ("a.png", "cat")]
    assert recs[0].path == listed / "imgs" / "sub" / "b.jpg"
    assert ds.root == (listed / "imgs").resolve()


def test_image_list_limit_per_class(listed):
    recs = _ds(ImageListDataset, csv=listed / "imgs" / "list.csv", limit_per_class=1).records()
    assert [r.image_id for r in recs] == ["a.png", "sub/b.jpg", "d.png"]


def test_image_list_missing_file(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "l.csv").write_text("path,label\na.png,x\nmissing.png,y\n")
    with pytest.raises(DataError, match="missing.png"):
        _ds(ImageListDataset, csv=tmp_path / "l.csv").records()
    ds = _ds(ImageListDataset, csv=tmp_path / "l.csv", on_bad_image="skip")
    recs = ds.records()
    assert [r.image_id for r in recs] == ["a.png", "missing.png"]
    with pytest.raises(DataError, match="missing"):
        ds.open(recs[1])
    assert ds.describe()["num_images"] == 2


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        ("file,label\na.png,x\n", "no 'path' column"),
        ("path,label\n", "no images"),
        ("path,label\na.png,x\na.png,y\n", "twice"),
        ("path,label\nnotes.txt,x\n", "image extension"),
        ("path,label\n,x\n", "empty path"),
    ],
)
def test_image_list_errors(text, match, tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        _ds(ImageListDataset, csv=tmp_path / "l.csv").records()


def test_image_list_missing_csv(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "none.csv")):
        _ds(ImageListDataset, csv=tmp_path / "none.csv").records()


def test_records_are_image_records(listed):
    assert all(isinstance(r, ImageRecord) for r in _ds(ImageListDataset, csv=listed / "imgs" / "list.csv").records())


def test_registration():
    registered = {}
    ids.register_datasets(register=lambda name, factory: registered.setdefault(name, factory))
    assert registered == {"image_folder": ImageFolderDataset, "image_list": ImageListDataset}
    with pytest.raises(ValidationError):
        ImageFolderDataset.Options(root="x", unknown=1)
