"""Start-up: ``--help``, ``plugins``, ``validate`` and a warm rerun import only what they use
(issue 16, item 3), and the per-version name lists (:mod:`sing_audit.name_lists`) that let
``validate`` check timm and open_clip model names without importing either library.

Each command runs in a fresh interpreter (``sys.modules`` of this test process holds
whatever other tests imported), with the name lists in a folder of the test's own
(``SING_AUDIT_CACHE_DIR``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sing_audit.cli import main
from sing_audit.name_lists import CACHE_DIR_ENV, library_value, names_dir

#: libraries that cost seconds to import (or pull such in) and that these commands never need
HEAVY = ("torch", "torchvision", "timm", "open_clip", "sklearn", "scipy", "matplotlib", "weasyprint", "diffusers",
         "transformers", "PIL")

CHILD = """
import json, sys
from sing_audit.cli import main
try:
    rc = main(json.loads(sys.argv[1]))
except SystemExit as exc:  # argparse's --help
    rc = exc.code
print("\\n@@" + json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
"""


def _env(cache: Path | str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the code this test process imports
    env[CACHE_DIR_ENV] = str(cache)
    env.pop("SING_AUDIT_LOAD_PLUGINS", None)
    env.pop("HF_HUB_OFFLINE", None)  # offline, the pre-flight of pretrained weights asks the libraries (not these tests)
    return env


def _child(argv: list[str], cache: Path, code: str = CHILD, cwd: Path | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True,
                          env=_env(cache), cwd=cwd, timeout=300, check=False)
    assert "@@" in proc.stdout, proc.stderr[-3000:]
    out = json.loads(proc.stdout.rsplit("@@", 1)[1])
    out["stdout"], out["stderr"] = proc.stdout, proc.stderr
    return out


def _heavy(modules: list[str]) -> list[str]:
    return sorted({m.split(".")[0] for m in modules} & set(HEAVY))


def _image_config(tmp_path: Path, **target: object) -> Path:
    from sing_audit.synthetic import write_image_folder
    from sing_audit.testing import PIPELINE_POLICY, write_config

    root = write_image_folder(tmp_path / "val", per_class=4, size=32)
    return write_config(tmp_path, {
        "output": "out",
        "dataset": {"plugin": "image_folder", "root": str(root)},
        "target": {"plugin": "open_clip", "name": "clip", "model": "ViT-B-32", "weights": "random", **target},
        "backbones": [{"name": "r50", "plugin": "timm", "model": "resnet50", "weights": "random", "img_size": 32}],
        "probes": ["null_removal"],
        "report": {"formats": ["json"]},
        "run": {"device": "cpu", "folds": 2, "bootstrap": 100},
        "policy": dict(PIPELINE_POLICY),
    })


# --------------------------------------------------------------------------- the commands


@pytest.mark.parametrize("argv", [["--help"], ["plugins"], ["run", "--help"]])
def test_help_and_plugins_import_no_heavy_library(tmp_path, argv):
    out = _child(argv, tmp_path / "cache")
    assert out["rc"] == 0, out["stderr"][-2000:]
    assert _heavy(out["modules"]) == []


def test_validate_of_a_timm_and_open_clip_config_imports_neither_once_the_names_are_known(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    pytest.importorskip("open_clip")
    cache = tmp_path / "cache"
    cfg = _image_config(tmp_path, image_size=32)
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    assert main(["-q", "validate", str(cfg)]) == 0  # the first validate asks the libraries and writes the lists
    assert (cache / "names" / "timm").is_dir() and (cache / "names" / "open_clip_torch").is_dir()
    out = _child(["validate", str(cfg)], cache)
    assert out["rc"] == 0, out["stderr"][-2000:]
    assert "valid" in out["stdout"]
    assert _heavy(out["modules"]) == []


def test_validate_with_the_cache_off_still_checks_names(tmp_path):
    pytest.importorskip("timm")
    import yaml

    cfg = _image_config(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    data["backbones"][0]["model"] = "resnet5O"
    cfg.write_text(yaml.safe_dump(data))
    out = _child(["validate", str(cfg)], "off")
    assert out["rc"] == 2
    assert "timm has no model named 'resnet5O'; did you mean" in out["stderr"] and "resnet50" in out["stderr"]
    assert "timm" in _heavy(out["modules"])  # off: the library is asked, as before


@pytest.mark.slow
def test_a_warm_rerun_imports_no_model_library(tmp_path, monkeypatch):
    """The cold run (in this process, the text encoder replaced by fixed vectors: the warm run
    reads them from the cache) fills the store and the name lists; the warm rerun, a new
    process, finds everything cached and never imports torch, timm, open_clip, scipy, ..."""
    pytest.importorskip("timm")
    pytest.importorskip("open_clip")
    import numpy as np
    from sing_audit_open_clip.target import OpenClipTarget

    def encode_text(self, prompts):
        rng = np.random.default_rng(len(prompts))
        return rng.standard_normal((len(prompts), self.embedding_dim()))

    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(cache))
    monkeypatch.setattr(OpenClipTarget, "encode_text", encode_text)
    cfg = _image_config(tmp_path, image_size=32)
    assert main(["-q", "run", str(cfg)]) in (0, 1)
    cold = json.loads((tmp_path / "out" / "results.json").read_text())
    out = _child(["-q", "run", str(cfg)], cache)
    assert out["rc"] in (0, 1), out["stderr"][-3000:]
    assert _heavy(out["modules"]) == []
    warm = json.loads((tmp_path / "out" / "results.json").read_text())
    for key in ("is_mean", "as_abs_mean", "null_dim", "rank"):
        assert warm["models"][0][key] == cold["models"][0][key]
    log = next((tmp_path / "out" / "logs").glob("*.log")).read_text()
    assert log.count("from cache") == 2  # the warm run's log: both models' arrays, nothing extracted


# --------------------------------------------------------------------------- the name lists


def test_names_dir_follows_the_cache_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    assert names_dir() == tmp_path / "names"
    for word in ("off", "0", "FALSE", "none"):
        monkeypatch.setenv(CACHE_DIR_ENV, word)
        assert names_dir() is None
    monkeypatch.delenv(CACHE_DIR_ENV)
    import platformdirs

    assert names_dir() == Path(platformdirs.user_cache_dir("sing-audit")) / "names"


class _Counter:
    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


def _stored(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "names").rglob("*.json"))


def test_a_stored_answer_is_read_back_and_a_stale_version_is_rebuilt(monkeypatch, tmp_path):
    from importlib import metadata

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    build = _Counter(["a", "b"])
    assert library_value("pluggy", "models", build) == ["a", "b"]
    assert library_value("pluggy", "models", build) == ["a", "b"] and build.calls == 1
    (path,) = _stored(tmp_path)
    record = json.loads(path.read_text())
    assert record["version"] == metadata.version("pluggy")
    record.update(version="0.0.0-older", value=["stale"])
    path.write_text(json.dumps(record))
    assert library_value("pluggy", "models", build) == ["a", "b"] and build.calls == 2
    assert json.loads(path.read_text())["version"] == metadata.version("pluggy")


@pytest.mark.parametrize("content", ["{not json", "", json.dumps(["a list"]), json.dumps({"format": 1})])
def test_a_corrupt_file_is_ignored_and_rebuilt(monkeypatch, tmp_path, content):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    build = _Counter(["a"])
    library_value("pluggy", "models", build)
    (path,) = _stored(tmp_path)
    path.write_text(content)
    assert library_value("pluggy", "models", build) == ["a"] and build.calls == 2
    assert json.loads(path.read_text())["value"] == ["a"]


def test_a_stored_answer_of_the_wrong_shape_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    build = _Counter(["a"])
    library_value("pluggy", "models", build)
    (path,) = _stored(tmp_path)
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "value": [1, 2]}))
    strings = lambda v: all(isinstance(x, str) for x in v)  # noqa: E731
    assert library_value("pluggy", "models", build, valid=strings) == ["a"] and build.calls == 2


def test_the_cache_off_asks_every_time_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, "off")
    monkeypatch.chdir(tmp_path)
    build = _Counter({"k": (1, 2)})
    assert library_value("pluggy", "x", build) == {"k": [1, 2]}  # as JSON gives it back, always
    assert library_value("pluggy", "x", build) == {"k": [1, 2]} and build.calls == 2
    assert list(tmp_path.rglob("*.json")) == []


def test_an_unwritable_cache_folder_is_not_an_error(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker))
    build = _Counter(["a"])
    assert library_value("pluggy", "models", build) == ["a"]
    assert library_value("pluggy", "models", build) == ["a"] and build.calls == 2


def test_a_failing_build_raises_and_stores_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))

    def build():
        raise ImportError("no such library")

    with pytest.raises(ImportError, match="no such library"):
        library_value("pluggy", "models", build)
    assert _stored(tmp_path) == []


def test_an_imported_library_is_asked_directly_and_a_valid_file_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    library_value("pluggy", "models", _Counter(["from the file"]))
    live = _Counter(["live", "with a model registered at run time"])
    assert library_value("pluggy", "models", live, module="json") == live.value  # json is imported
    assert live.calls == 1
    assert library_value("pluggy", "models", _Counter(None)) == ["from the file"]


# --------------------------------------------------------------------------- the same answers, without the import

CHECKS = """
import json, sys
from sing_audit.errors import SingAuditError
from sing_audit_timm.pretrained import check_architecture, check_tag
from sing_audit_timm.backbone import TimmBackbone
from sing_audit_open_clip.target import OpenClipTarget

out = {}
for name, call in [
    ("arch", lambda: check_architecture("resnet5O")),
    ("vit_arch", lambda: check_architecture("vit_tiny_patch16_22", "vit_*")),
    ("tag", lambda: check_tag("resnet50", "a1_in1kk")),
    ("clip", lambda: OpenClipTarget({"model": "ViT-B-3", "weights": "random"}).check()),
    ("clip_tag", lambda: OpenClipTarget({"model": "ViT-B-32", "weights": "openaii"}).check()),
    ("deprecated", lambda: check_architecture(json.loads(sys.argv[1])[0])),
]:
    try:
        call()
        out[name] = None
    except SingAuditError as exc:
        out[name] = str(exc)
out["describe"] = TimmBackbone({"model": "resnet50", "weights": "random", "img_size": 48}).describe()
out["describe_tag"] = TimmBackbone({"model": "resnet50.tv_in1k", "weights": "pretrained"}).describe()
out["declared"] = TimmBackbone({"model": "resnet50", "weights": "random"}).declared_classes()
out["clip_describe"] = OpenClipTarget({"model": "ViT-B-32", "weights": "pretrained"}).describe()
print("\\n@@" + json.dumps({**out, "modules": sorted(sys.modules)}))
"""


@pytest.mark.slow
def test_name_checks_and_descriptions_are_the_same_from_the_lists(tmp_path, monkeypatch):
    """The same messages (close matches included), the same ``describe()`` (so the same cache
    keys) and the same declared classes, asked of the libraries (cache off) and read from
    the lists (a new process that imports neither)."""
    pytest.importorskip("timm")
    pytest.importorskip("open_clip")
    import timm

    deprecated = sorted(timm.models.get_deprecated_models())[0]  # timm builds it, without listing it
    cache = tmp_path / "cache"
    live = _child([deprecated], Path("off"), code=CHECKS)
    assert "timm" in _heavy(live["modules"])
    first = _child([deprecated], cache, code=CHECKS)  # writes the lists
    cached = _child([deprecated], cache, code=CHECKS)
    assert _heavy(cached["modules"]) == []
    for out in (first, cached):
        for key in ("arch", "vit_arch", "tag", "clip", "clip_tag", "deprecated", "describe", "describe_tag",
                    "declared", "clip_describe"):
            assert out[key] == live[key], key
    assert "did you mean resnet50" in live["arch"] and "known tags:" in live["tag"]
    assert "did you mean" in live["clip"] and "ViT-B-32" in live["clip"] and "openai" in live["clip_tag"]
    assert live["deprecated"] is None
    assert live["describe"]["timm_version"] == timm.__version__
    assert live["clip_describe"]["resolved_tag"] == "openai"


def test_an_answer_is_plain_json_data_first_time_and_after(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    build = _Counter({"file": tmp_path / "w.pt", "size": (3, 8, 8)})
    first = library_value("pluggy", "cfg", build)
    assert first == library_value("pluggy", "cfg", build) == {"file": str(tmp_path / "w.pt"), "size": [3, 8, 8]}
    assert build.calls == 1
