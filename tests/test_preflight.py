"""The pre-flight: mistakes found by ``validate`` and by ``run`` before any model loads,
each a one-line message naming the config field, exit 2."""

from __future__ import annotations

import pytest

from sing_audit.cli import main
from sing_audit.components import ImageBackbone
from sing_audit.errors import ConfigError, DataError, at_field
from sing_audit.testing.audits import image_folder_audit

R18 = {"name": "r18", "plugin": "torch_module", "model": "torchvision.models:resnet18", "head": "fc",
       "kwargs": {"weights": None, "num_classes": 3}, "weights": "random", "img_size": 32,
       "class_names": ["tench", "goldfish", "great white shark"]}


@pytest.fixture
def no_model_loads(monkeypatch):
    """Building or loading any image model is a test failure."""
    from sing_audit.builtins.torch_module import TorchModuleBackbone

    def refuse(self, device="cpu"):
        raise AssertionError("a model was loaded before the pre-flight failed")

    monkeypatch.setattr(TorchModuleBackbone, "load", refuse)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


@pytest.mark.parametrize("command", ["validate", "run"])
def test_missing_dataset_root(tmp_path, capsys, no_model_loads, command):
    cfg = image_folder_audit(tmp_path, [R18], dataset={"root": "no-such-folder"})
    assert main([command, str(cfg)]) == 2
    err = _one_line_error(capsys)
    assert f"{cfg}: dataset.root: dataset root not found: " in err and "no-such-folder" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["validate", "run"])
def test_dataset_root_without_images(tmp_path, capsys, no_model_loads, command):
    (tmp_path / "empty" / "my_widget").mkdir(parents=True)
    (tmp_path / "empty" / "my_widget" / "notes.txt").write_text("not an image")
    cfg = image_folder_audit(tmp_path, [R18], dataset={"root": str(tmp_path / "empty")})
    assert main([command, str(cfg)]) == 2
    err = _one_line_error(capsys)
    assert f"{cfg}: dataset.root: class folder " in err and "has no images" in err


def test_missing_image_list(tmp_path, capsys, no_model_loads):
    cfg = image_folder_audit(tmp_path, [R18], dataset={"plugin": "image_list", "csv": "missing.csv", "root": None})
    assert main(["validate", str(cfg)]) == 2
    assert f"{cfg}: dataset.csv: image list not found: " in _one_line_error(capsys)


def test_missing_class_map_file(tmp_path, capsys, no_model_loads):
    cfg = image_folder_audit(tmp_path, [R18], dataset={"class_map": "nope.json"})
    assert main(["run", str(cfg)]) == 2
    assert f"{cfg}: dataset.class_map: mapping file not found: " in _one_line_error(capsys)


def test_a_valid_image_audit_still_validates(tmp_path, capsys, no_model_loads):
    from sing_audit.synthetic import SYNSETS

    # R18 names its classes (tench, ...): the synset folders map through class_map, as the run needs
    cfg = image_folder_audit(tmp_path, [R18], dataset={"class_map": {s: i for i, s in enumerate(SYNSETS)}})
    assert main(["validate", str(cfg)]) == 0
    assert "valid" in capsys.readouterr().out


class _Checked(ImageBackbone):
    """A backbone whose pre-flight refuses its model name."""

    def __init__(self, options=None):
        pass

    def check(self):
        with at_field("model"):
            raise ConfigError("there is no model 'nope'")

    def describe(self): return {}
    def head(self): raise AssertionError
    def load(self, device="cpu"): raise AssertionError("loaded")
    def transform(self): raise AssertionError
    def features(self, images): raise AssertionError
    def logits(self, images): raise AssertionError


def test_check_of_any_component_names_its_field(tmp_path):
    from sing_audit import hookimpl
    from sing_audit.config import load_config
    from sing_audit.host import create_plugin_manager, create_registry
    from sing_audit.pipeline import build_plan

    class Plugin:
        @hookimpl
        def register_backbones(self, register):
            register("checked", _Checked)

    pm = create_plugin_manager(load_entry_points=False)
    pm.register(Plugin())
    cfg = image_folder_audit(tmp_path, [{"name": "c", "plugin": "checked"}])
    with pytest.raises(ConfigError, match=r"audit\.yaml: backbones\[0\]\.model: there is no model 'nope'$"):
        build_plan(load_config(cfg), create_registry(pm), "audit.yaml")


def test_at_field_keeps_a_field_already_named():
    with pytest.raises(DataError) as info:
        with at_field("model"):
            raise DataError("x", field="root")
    assert info.value.field == "root"


# --------------------------------------------------------------------------- labels to the declared head classes


class _Declared(_Checked):
    """A backbone whose config declares ImageNet-1k's classes."""

    def check(self):
        pass

    def declared_classes(self):
        from sing_audit.imagenet import imagenet_class_info

        keys, names = imagenet_class_info(1000)
        return 1000, list(names), list(keys)


def _plan_with(tmp_path, factory, **dataset):
    from sing_audit import hookimpl
    from sing_audit.config import load_config
    from sing_audit.host import create_plugin_manager, create_registry
    from sing_audit.pipeline import build_plan

    class Plugin:
        @hookimpl
        def register_backbones(self, register):
            register("declared", factory)

    pm = create_plugin_manager(load_entry_points=False)
    pm.register(Plugin())
    cfg = image_folder_audit(tmp_path, [{"name": "d", "plugin": "declared"}], dataset=dataset)
    return build_plan(load_config(cfg), create_registry(pm), "audit.yaml")


def _folder(tmp_path, *classes):
    from PIL import Image

    for name in classes:
        (tmp_path / "imgs" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / name / "a.png")
    return str(tmp_path / "imgs")


def test_a_label_that_maps_to_no_declared_class_fails_the_preflight(tmp_path):
    root = _folder(tmp_path, "n01440764", "tabby cat", "my_widget")
    with pytest.raises(DataError) as err:
        _plan_with(tmp_path, _Declared, root=root)
    msg = str(err.value)
    assert msg.startswith("audit.yaml: dataset: 1 dataset label(s) do not match the head's class names: 'my_widget'")
    assert "add class_map" in msg and "backbones[0] 'd': 1000 classes" in msg and "\n" not in msg


def test_synonyms_keys_and_class_map_pass_the_preflight(tmp_path):
    root = _folder(tmp_path, "n01440764", "tabby cat", "my_widget")
    _plan_with(tmp_path, _Declared, root=root, class_map={"n01440764": 0, "tabby cat": 281, "my_widget": 5})
    _plan_with(tmp_path / "b", _Declared, root=_folder(tmp_path / "b", "n01440764", "tabby cat"))


def test_a_backbone_that_declares_nothing_is_left_to_the_run(tmp_path):
    class Undeclared(_Declared):
        def declared_classes(self):
            return None

    _plan_with(tmp_path, Undeclared, root=_folder(tmp_path, "my_widget"))


@pytest.mark.parametrize("command", ["validate", "run"])
def test_torch_module_class_names_map_the_labels_before_loading(tmp_path, capsys, no_model_loads, command):
    """torch_module's ``class_names`` declare its head's classes: a class folder of none of
    them is found before the model is built."""
    from PIL import Image

    root = tmp_path / "val"
    for label in [*R18["class_names"], "my_widget"]:
        (root / label).mkdir(parents=True)
        Image.new("RGB", (32, 32), (120, 30, 200)).save(root / label / "a.png")
    cfg = image_folder_audit(tmp_path, [R18], root=root)
    assert main([command, str(cfg)]) == 2
    err = _one_line_error(capsys)
    assert "dataset: 1 dataset label(s) do not match the head's class names: 'my_widget'" in err, err
    assert "backbones[0] 'r18': 3 classes" in err, err
    assert not (tmp_path / "out").exists()
