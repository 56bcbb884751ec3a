"""The ``hf_datasets`` dataset: local Hugging Face data sets (``save_to_disk`` folders,
parquet files, image folders) audited like the image folder they hold, sharded like it,
their ClassLabel names naming the classes, and never a hub id."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sing_audit.builtins.hf_datasets import HfDataset
from sing_audit.classmap import map_labels
from sing_audit.cli import main
from sing_audit.components import LinearHead
from sing_audit.errors import DataError
from sing_audit.synthetic import SYNSETS, write_image_folder

from .conftest import image_folder_audit
from .test_webdataset import BACKBONES, EXTRA, RUN, features, image_files, results

datasets = pytest.importorskip("datasets")


def hf_dataset(root: Path, names=SYNSETS):
    """The image folder ``root`` as a ``datasets.Dataset``: embedded image bytes, a
    ClassLabel label with ``names`` (one per synset, in order), ids as image_folder's."""
    files = image_files(root)
    features = datasets.Features({
        "image": datasets.Image(), "label": datasets.ClassLabel(names=list(names)), "id": datasets.Value("string")})
    return datasets.Dataset.from_dict({
        "image": [{"bytes": (root / f).read_bytes(), "path": Path(f).name} for f in files],
        "label": [SYNSETS.index(f.split("/")[0]) for f in files],
        "id": files,
    }, features=features)


def hf_audit(tmp_path: Path, root: Path, **dataset_options) -> Path:
    """image_folder_audit's config (same target, backbones, run) with an hf_datasets dataset."""
    cfg = image_folder_audit(tmp_path, BACKBONES, root=root, run=RUN, per_class=5, **EXTRA)
    data = yaml.safe_load(cfg.read_text())
    data["dataset"] = {"plugin": "hf_datasets", **dataset_options}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


def dataset(path: Path, **options) -> HfDataset:
    return HfDataset({"path": str(path), **options})


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("hf-images") / "val", per_class=5, size=32)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, image_root):
    tmp = tmp_path_factory.mktemp("hf-folder-run")
    cfg = image_folder_audit(tmp, BACKBONES, root=image_root, run=RUN, per_class=5, **EXTRA)
    code = main(["run", str(cfg)])
    assert code in (0, 1)
    return code, tmp / "out"


# --------------------------------------------------------------------------- audits


@pytest.mark.parametrize("layout", ["disk", "parquet", "imagefolder"])
def test_an_hf_audit_equals_the_image_folder_audit(tmp_path, image_root, folder_run, layout, monkeypatch):
    if layout == "disk":
        hf_dataset(image_root).save_to_disk(str(tmp_path / "hf"))
        options = {"path": "hf", "id_column": "id"}
    elif layout == "parquet":
        (tmp_path / "hf" / "data").mkdir(parents=True)
        hf_dataset(image_root).to_parquet(str(tmp_path / "hf" / "data" / "validation-00000-of-00001.parquet"))
        options = {"path": "hf", "id_column": "id"}
    else:  # datasets' imagefolder layout is image_folder's: ids are the relative paths
        options = {"path": os.path.relpath(image_root, tmp_path)}
    cfg = hf_audit(tmp_path, image_root, **options)
    code, reference = folder_run
    import socket

    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail(f"network: {a}"))  # local data, no hub
    assert main(["run", str(cfg)]) == code
    np.testing.assert_array_equal(features(tmp_path / "out"), features(reference))
    assert results(tmp_path / "out") == results(reference)
    described = json.loads((tmp_path / "out" / "results.json").read_text())["provenance"]["dataset"]
    assert described["plugin"] == "hf_datasets" and described["options"]["format"] == layout


def test_sharded_runs_merge_to_one_run(tmp_path, image_root, folder_run):
    hf_dataset(image_root).save_to_disk(str(tmp_path / "hf"))
    cfg = hf_audit(tmp_path, image_root, path="hf", id_column="id")
    for i in range(2):
        assert main(["run", str(cfg), "--shard", f"{i}/2"]) == 0
    code, reference = folder_run
    assert main(["merge", str(cfg)]) == code
    np.testing.assert_array_equal(features(tmp_path / "out"), features(reference))
    assert results(tmp_path / "out") == results(reference)


def test_a_changed_data_set_changes_the_cache_key(tmp_path, image_root):
    hf_dataset(image_root).save_to_disk(str(tmp_path / "a"))
    before = dataset(tmp_path / "a", id_column="id").describe()
    ds = hf_dataset(image_root)
    first = image_files(image_root)[1]
    ds = ds.map(lambda row: {"image": {"bytes": (image_root / first).read_bytes(), "path": "x.png"}} if row["id"] ==
                image_files(image_root)[0] else {})
    ds.save_to_disk(str(tmp_path / "b"))
    after = dataset(tmp_path / "b", id_column="id").describe()
    assert after["digest"] != before["digest"] and after["num_images"] == before["num_images"]


# --------------------------------------------------------------------------- labels


def test_class_label_names_name_the_head_classes_with_labels_index(tmp_path, image_root):
    hf_dataset(image_root, names=["Tench fish", "Gold fish", "White shark"]).save_to_disk(str(tmp_path / "hf"))
    ds = dataset(tmp_path / "hf", labels="index", id_column="id")
    ds.check()
    assert ds.class_map() == {"0": 0, "1": 1, "2": 2}
    assert ds.class_names() == {"0": "Tench fish", "1": "Gold fish", "2": "White shark"}
    head = LinearHead(np.zeros((1000, 0)), None, 0.0, [f"imagenet {i}" for i in range(1000)], None)
    mapping = map_labels([r.label for r in ds.records()], head, ds.class_map(), ds.class_names())
    assert mapping.class_names[:3] == ["Tench fish", "Gold fish", "White shark"]  # the report's names


def test_class_label_names_are_the_labels_by_default(tmp_path, image_root):
    hf_dataset(image_root).save_to_disk(str(tmp_path / "hf"))
    ds = dataset(tmp_path / "hf", id_column="id")
    assert sorted({r.label for r in ds.records()}) == list(SYNSETS)
    assert ds.class_map() is None and ds.class_names() is None  # mapped like image_folder's folder names


def test_limit_per_class_and_default_ids(tmp_path, image_root):
    hf_dataset(image_root).save_to_disk(str(tmp_path / "hf"))
    records = dataset(tmp_path / "hf", limit_per_class=2).records()
    assert [r.image_id for r in records][:3] == ["n01440764_0.png", "n01440764_1.png", "n01443537_0.png"]
    assert len(records) == 6


# --------------------------------------------------------------------------- errors


def test_a_label_column_that_does_not_exist_names_close_ones(tmp_path, image_root):
    hf_dataset(image_root).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(DataError, match=r"no column 'lable' for the labels \(close: 'label'\).*label_column: null") as exc:
        dataset(tmp_path / "hf", label_column="lable").check()
    assert exc.value.field == "label_column"
    with pytest.raises(DataError, match=r"no column 'img' for the images \(close: 'image'\)"):
        dataset(tmp_path / "hf", image_column="img").check()
    assert dataset(tmp_path / "hf", label_column=None).labels() == []


def test_splits_are_chosen_by_name(tmp_path, image_root):
    ds = hf_dataset(image_root)
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(6))}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(DataError, match="has the splits train, validation; set split"):
        dataset(tmp_path / "hf").records()
    with pytest.raises(DataError, match=r"no split 'valid' \(close: validation\)"):
        dataset(tmp_path / "hf", split="valid").records()
    assert len(dataset(tmp_path / "hf", split="validation", id_column="id").records()) == 6


def test_a_hub_id_is_refused_without_touching_the_network(tmp_path, monkeypatch):
    import socket

    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("network"))
    with pytest.raises(DataError, match=r"on this machine only.*Hugging Face Hub id.*save_to_disk"):
        HfDataset({"path": "ILSVRC/imagenet-1k", "base_dir": tmp_path}).check()
    with pytest.raises(DataError, match="data set not found"):
        dataset(tmp_path / "nothing-here").check()


def test_a_damaged_parquet_file_is_named(tmp_path, image_root):
    path = tmp_path / "val.parquet"
    hf_dataset(image_root).to_parquet(str(path))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"parquet file .*val\.parquet cannot be read"):
        dataset(path).check()


def test_a_corrupt_image_cell_is_a_bad_image(tmp_path, image_root):
    ds = hf_dataset(image_root)
    ds = ds.map(lambda row, i: {"image": {"bytes": b"garbage" * 10, "path": "bad.png"}} if i == 0 else {}, with_indices=True)
    ds.save_to_disk(str(tmp_path / "hf"))
    hf = dataset(tmp_path / "hf", id_column="id")
    with pytest.raises(DataError, match="n01440764/n01440764_0.png"):
        hf.open(hf.records()[0])
    assert hf.open(hf.records()[1]).size == (32, 32)


def test_without_the_library_the_extra_is_named(tmp_path, image_root, monkeypatch, capsys):
    cfg = hf_audit(tmp_path, image_root, path=str(image_root))
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    assert main(["validate", str(cfg)]) == 2
    assert "pip install 'sing-audit[hf-datasets]'" in capsys.readouterr().err


def test_plain_labels_with_labels_index_must_be_integers(tmp_path, image_root):
    ds = hf_dataset(image_root).cast_column("label", datasets.Value("int64"))
    ds.save_to_disk(str(tmp_path / "ints"))
    hf = dataset(tmp_path / "ints", labels="index", id_column="id")
    assert hf.class_map() == {"0": 0, "1": 1, "2": 2} and hf.class_names() is None  # no ClassLabel: no names
    ds.map(lambda row: {"id": row["id"], "synset": row["id"].split("/")[0]}).save_to_disk(str(tmp_path / "text"))
    with pytest.raises(DataError, match=r"label 'n01440764' in column 'synset' is not a head index.*labels: key"):
        dataset(tmp_path / "text", labels="index", label_column="synset", id_column="id").records()


def test_duplicate_ids_are_refused(tmp_path, image_root):
    ds = hf_dataset(image_root)
    ds.map(lambda row: {"id": "same"}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(DataError, match=r"image id 'same' occurs twice in 'id'"):
        dataset(tmp_path / "hf", id_column="id").records()
