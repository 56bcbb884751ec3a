"""docs/datasets.md: its config blocks are valid dataset options, and its shard-making
recipe makes shards that audit with image_folder's ids and labels."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

from sing_audit.builtins.image_datasets import ImageFolderDataset
from sing_audit.builtins.webdataset_shards import WebDatasetShards
from sing_audit.host import create_registry
from sing_audit.synthetic import write_image_folder

from .test_plugin_docs import code_blocks, run_python_block

PAGE = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"
BLOCKS = code_blocks(PAGE.read_text(encoding="utf-8"))


def test_every_dataset_block_has_valid_options():
    registry = create_registry()
    checked = set()
    for lang, start, code in BLOCKS:
        if lang != "yaml":
            continue
        spec = yaml.safe_load(code)["dataset"]
        entry = registry.get("dataset", spec.pop("plugin"))
        entry.options_model(**spec)  # a pydantic ValidationError names the key
        checked.add(entry.name)
    assert checked == {"image_folder", "image_list", "webdataset", "hf_datasets"}


def test_the_shard_recipe_gives_image_folder_ids_and_labels(tmp_path, monkeypatch):
    val = write_image_folder(tmp_path / "png", per_class=5, size=32)
    for png in sorted(val.rglob("*.png")):  # ImageNet's layout: val/<synset>/<name>.JPEG
        out = tmp_path / "imagenet" / "val" / png.parent.name / f"ILSVRC2012_val_{png.stem}.JPEG"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).convert("RGB").save(out, format="JPEG")
    monkeypatch.chdir(tmp_path)
    (python,) = [(start, code) for lang, start, code in BLOCKS if lang == "python"]
    run_python_block(PAGE, python[0], python[1], {})
    shards = WebDatasetShards({"shards": "shards/imagenet-val-{000..063}.tar", "base_dir": tmp_path})
    folder = ImageFolderDataset({"root": tmp_path / "imagenet" / "val"})
    assert [(r.image_id, r.label) for r in shards.records()] == [(r.image_id, r.label) for r in folder.records()]
    assert shards.open(shards.records()[0]).size == (32, 32)

    # the recipe's next steps: its audit.yaml beside shards/, the shard index built once
    from sing_audit.cli import main

    (recipe,) = [code for lang, _, code in BLOCKS if lang == "yaml" and code.startswith("name: imagenet-val")]
    (tmp_path / "audit.yaml").write_text(recipe)
    (commands,) = [code for lang, _, code in BLOCKS if lang == "bash" and "torchrun" in code]
    index_command = commands.splitlines()[0].split()
    assert index_command[:2] == ["sing-audit", "index-shards"]
    assert main(index_command[1:]) == 0
    spec = yaml.safe_load(recipe)["dataset"]
    indexed = WebDatasetShards({**{k: v for k, v in spec.items() if k != "plugin"}, "base_dir": tmp_path})
    assert indexed.options.index is not None
    assert indexed.records() == shards.records() and indexed.describe() == shards.describe()
