"""The third-party path: an external plugin package, installed and discovered through its
entry point, audits a model end to end.

``examples/sing-audit-tinynet`` is built and installed once per module with pip into a
temporary folder (``--target``, ``--no-deps``, ``--no-build-isolation``, ``--no-index``:
no network, nothing written to the environment or to the example's source tree). Every
command then runs in a subprocess with that folder on ``PYTHONPATH``, so sing-audit finds
the plugin the way it finds any installed package: through ``importlib.metadata`` entry
points of the group ``sing_audit``.

Also here: a translator registered through ``register_translators`` by a plugin object
(not installed) runs in an audit, since no built-in test exercises that hook.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import yaml

import sing_audit
from sing_audit import hookimpl
from sing_audit.components import PluginOptions, Translator
from sing_audit.errors import ConfigError
from sing_audit.synthetic import SYNSETS, write_image_folder
from .conftest import PIPELINE_POLICY

REPO = Path(sing_audit.__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "sing-audit-tinynet"
DIST = "sing-audit-tinynet"
VERSION = "0.1.0"
CLASS_NAMES = ["tench", "goldfish", "great white shark"]
PER_CLASS = 4

pytestmark = pytest.mark.slow


def _env(site: Path | None, **extra: str) -> dict[str, str]:
    """The current environment, with ``site`` (the install folder) and the repo on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("SING_AUDIT_LOAD_PLUGINS", "GITHUB_STEP_SUMMARY")}
    parts = ([str(site)] if site is not None else []) + [str(REPO)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env.update(PYTHONPATH=os.pathsep.join(parts), HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def _cli(site: Path | None, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sing_audit.cli", *args],
        env=_env(site, **env),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=str(REPO),
    )


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example package installed (once) into a private folder: ``pip install --target``."""
    work = tmp_path_factory.mktemp("tinynet-build")
    source = work / "src"
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    target = work / "site"
    before = _tree(EXAMPLE)
    proc = subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
            "--no-compile", "--quiet", "--target", str(target), str(source),
        ],
        env=_env(None),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, f"pip install of the example failed:\n{proc.stdout}\n{proc.stderr}"
    assert _tree(EXAMPLE) == before, "installing wrote into the example's source tree"
    dist_info = list(target.glob("sing_audit_tinynet-*.dist-info"))
    assert len(dist_info) == 1, sorted(p.name for p in target.iterdir())
    entry_points = (dist_info[0] / "entry_points.txt").read_text()
    assert "[sing_audit]" in entry_points and "tinynet = sing_audit_tinynet.plugin" in entry_points
    return target


@pytest.fixture
def tinynet_modules(site, monkeypatch):
    """The installed package importable in this process for the test's duration only."""
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield
    for name in [m for m in sys.modules if m == "sing_audit_tinynet" or m.startswith("sing_audit_tinynet.")]:
        del sys.modules[name]
    importlib.invalidate_caches()


# --------------------------------------------------------------------------- discovery


def test_environment_is_not_polluted(site, monkeypatch):
    """The install went into a private folder: this process does not see the plugin."""
    from sing_audit.host import create_registry

    monkeypatch.delenv("SING_AUDIT_LOAD_PLUGINS", raising=False)
    assert str(site) not in sys.path
    try:
        metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        pass
    else:  # pragma: no cover - a developer's own install, not this test's
        pytest.skip(f"{DIST} is installed in this environment (pip install -e?), so its absence cannot be checked")
    assert "tinynet" not in create_registry().names("backbone")
    with pytest.raises(ImportError):
        importlib.import_module("sing_audit_tinynet")


def test_plugins_command_lists_the_package(site):
    proc = _cli(site, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(proc.stdout)}
    for key in [("backbone", "tinynet"), ("concept_set", "dtd_textures"), ("probe", "prompt_flip")]:
        assert key in rows, f"{key} not registered; got {sorted(rows)}"
        assert rows[key]["package"] == f"{DIST} {VERSION}"
        assert rows[key]["module"] == "tinynet"  # the entry point's name
    assert rows[("backbone", "tinynet")]["doc"].startswith("TinyNet")
    # the built-ins are still there, still built in; a family's components name its distribution
    assert rows[("backbone", "torch_module")]["package"].endswith("(built-in)")
    assert rows[("backbone", "timm")]["package"].startswith("sing-audit-timm ")


_SELECTIONS = """
import contextlib, io, json, os, sys
from sing_audit.cli import main
from sing_audit.host import create_registry

out = {}
for value in json.loads(sys.argv[1]):
    if value is None:
        os.environ.pop("SING_AUDIT_LOAD_PLUGINS", None)
    else:
        os.environ["SING_AUDIT_LOAD_PLUGINS"] = value
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        code = main(["plugins"])
    out[str(value)] = {"backbones": create_registry().names("backbone"), "text": text.getvalue(), "code": code}
print(json.dumps(out))
"""


def test_load_plugins_selects_installed_packages(site):
    """``SING_AUDIT_LOAD_PLUGINS``: unset loads everything, empty only the built-ins, a name only that
    plugin (one subprocess: the host reads the variable each time it builds a registry)."""
    values = [None, "", DIST, "tinynet", "some-other-plugin"]
    proc = subprocess.run(
        [sys.executable, "-c", _SELECTIONS, json.dumps(values)],
        env=_env(site),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    loaded = {value: "tinynet" in got[str(value)]["backbones"] for value in values}
    assert loaded == {None: True, "": False, DIST: True, "tinynet": True, "some-other-plugin": False}
    for value in values:
        assert got[str(value)]["code"] == 0 and "torch_module" in got[str(value)]["backbones"]
    # the text listing names the package and version on the plugin's line
    line = next(ln for ln in got["None"]["text"].splitlines() if ln.strip().startswith("tinynet "))
    assert f"{DIST} {VERSION}" in line
    assert "tinynet " not in got[""]["text"]


def test_the_examples_own_tests_pass(site, tmp_path):
    """The plugin's own test suite (sing_audit.testing contract checks) against the installed copy."""
    tests = tmp_path / "tests"
    shutil.copytree(EXAMPLE / "tests", tests, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tests)],
        env=_env(site),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


# --------------------------------------------------------------------------- end to end


def _write_target(path: Path, ids: list[str], concepts: list[str]) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        path,
        image_embeddings=rng.normal(size=(len(ids), 8)).astype(np.float32),
        text_embeddings=rng.normal(size=(len(CLASS_NAMES), 8)).astype(np.float32),
        image_ids=np.array(ids),
        concept_names=np.array(concepts),
        concept_embeddings=rng.normal(size=(len(concepts), 8)).astype(np.float32),
    )


def test_audit_end_to_end_with_weights_from_a_file(site, tmp_path, tinynet_modules):
    import torch
    from safetensors.torch import save_file
    from sing_audit_tinynet.backbone import TinyNetBackbone
    from sing_audit_tinynet.model import TinyNet
    from sing_audit_tinynet.textures import DTD_TEXTURES

    from sing_audit.weights import file_digest

    # random weights, saved to a file and loaded back through the plugin's weights option
    torch.manual_seed(3)
    weights = tmp_path / "ckpt" / "tiny.safetensors"
    weights.parent.mkdir()
    save_file(TinyNet("tinynet_s", num_classes=3).state_dict(), str(weights))

    root = write_image_folder(tmp_path / "val", per_class=PER_CLASS, size=40)
    ids = [f"{s}/{s}_{i}.png" for s in SYNSETS for i in range(PER_CLASS)]
    _write_target(tmp_path / "t.npz", ids, list(DTD_TEXTURES))
    backbone = {
        "name": "tiny",
        "plugin": "tinynet",
        "model": "tinynet_s",
        "num_classes": 3,
        "weights": "ckpt/tiny.safetensors",  # relative to the config file
        "class_names": CLASS_NAMES,
        "img_size": 32,
    }
    config = {
        "output": "out",
        "dataset": {"plugin": "image_folder", "root": str(root), "class_map": {s: i for i, s in enumerate(SYNSETS)}},
        "target": {"plugin": "precomputed", "name": "emb", "path": "t.npz"},
        "backbones": [backbone],
        "probes": ["null_removal", "prompt_flip", {"plugin": "concepts", "sets": ["dtd_textures"], "top_k": 3}],
        "policy": PIPELINE_POLICY,  # a pipeline test: too few images per class to judge any
        "run": {"device": "cpu", "folds": 2, "bootstrap": 100, "batch_size": 8},
        "report": {"formats": ["json", "csv"]},
    }
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    proc = _cli(site, "run", str(cfg))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["schema_version"] and result["passed"] is True and result["random_weights"] is False
    assert result["provenance"]["components"]["backbone tiny"] == {"plugin": "tinynet", "package": f"{DIST} {VERSION}"}
    (model,) = result["models"]
    assert model["name"] == "tiny" and model["target"] == "emb"
    assert model["random_weights"] is False and model["weights_digest"] == file_digest(weights)
    # tinynet_s: 32 features, a 3-class head of rank 3
    assert (model["num_features"], model["num_classes"], model["rank_rule"]) == (32, 3, "rank")
    assert (model["rank"], model["null_dim"], model["n_images"]) == (3, 29, 3 * PER_CLASS)
    assert 0 < model["null_energy"] < 1
    assert model["is_mean"] > 0 and model["as_abs_mean"] > 0
    assert model["is_as_ratio"] == pytest.approx(model["is_mean"] / model["as_abs_mean"], rel=1e-6)
    assert set(model["fidelity"]) >= {"cosine", "r2"}
    # null removal leaves the logits of the folded head alone: the temperature was folded into W
    assert model["logit_drift"]["relative_max"] < 1e-6 and model["logit_drift"]["prediction_agreement"] == 1.0
    assert [c["name"] for c in model["classes"]] == CLASS_NAMES
    for i, c in enumerate(model["classes"]):
        assert c["index"] == i and c["n"] == PER_CLASS and c["flagged"] is False
        assert {"as_mean", "as_abs_mean", "as_contrast", "is_mean", "flag_reasons", "outlier"} <= set(c)

    # the classifier's own top-1 matches the model with the file's weights, run here directly
    loaded = TinyNetBackbone({**{k: v for k, v in backbone.items() if k not in ("name", "plugin")}, "weights": str(weights)})
    loaded.load("cpu")
    from PIL import Image

    transform = loaded.transform()
    images = torch.stack([transform(Image.open(root / i).convert("RGB")) for i in ids])
    predicted = loaded.logits(images).argmax(dim=1).numpy()
    truth = np.repeat(np.arange(3), PER_CLASS)
    assert model["sanity"]["classifier_top1"] == pytest.approx(float((predicted == truth).mean()))

    # the plugin's probe and concept set ran
    flip = model["probes"]["prompt_flip"]
    assert flip["n"] == 3 * PER_CLASS and 0.0 <= flip["flip_rate"] <= 1.0 and set(flip["per_class"]) == set(CLASS_NAMES)
    concepts = model["probes"]["concepts"]
    assert [s["name"] for s in concepts["sets"]] == ["dtd_textures"] and concepts["sets"][0]["size"] == 47
    assert concepts["embeddings"] == "precomputed"
    header = (tmp_path / "out" / model["files"]["images_csv"]).read_text().splitlines()[0]
    assert "prompt_flip" in header


def test_random_weights_must_be_asked_for(site, tmp_path):
    """No weights file and no ``random``: bad input (exit 2), never a silent random model."""
    root = write_image_folder(tmp_path / "val", per_class=2, size=32)
    config = {
        "output": "out",
        "dataset": {"plugin": "image_folder", "root": str(root)},
        "target": {"plugin": "precomputed", "path": "t.npz"},
        "backbones": [{"name": "tiny", "plugin": "tinynet", "num_classes": 3, "weights": "pretrained"}],
    }
    _write_target(tmp_path / "t.npz", [f"{s}/{s}_{i}.png" for s in SYNSETS for i in range(2)], ["striped"])
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    proc = _cli(site, "validate", str(cfg))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no pretrained weights" in proc.stderr + proc.stdout


# --------------------------------------------------------------------------- register_translators


class LeastSquares(Translator):
    """A third-party translator: ordinary least squares with an intercept (numpy lstsq)."""

    class Options(PluginOptions):
        rcond: float | None = None

    def __init__(self, options: LeastSquares.Options | None = None):
        self.options = options or self.Options()

    def fit(self, features, targets, groups=None):
        x = np.hstack([np.asarray(features, np.float64), np.ones((len(features), 1))])
        coef, *_ = np.linalg.lstsq(x, np.asarray(targets, np.float64), rcond=self.options.rcond)
        self.coef_, self.intercept_ = coef[:-1].T, coef[-1]
        return self

    def predict(self, features):
        if not hasattr(self, "coef_"):
            raise RuntimeError("LeastSquares: fit before predict")
        return np.asarray(features, np.float64) @ self.coef_.T + self.intercept_

    def linear_map(self):
        return self.coef_, self.intercept_


def test_hook_register_translators(synthetic_config, tmp_path):
    """A translator registered by a plugin's ``register_translators`` is chosen by name in the config."""
    from sing_audit.host import create_plugin_manager, create_registry
    from sing_audit.pipeline import run_audit

    class Plugin:
        @hookimpl
        def register_translators(self, register):
            register("lstsq", LeastSquares)

    pm = create_plugin_manager(load_entry_points=False)
    pm.register(Plugin(), name="lstsq-plugin")
    registry = create_registry(pm)
    assert registry.get("translator", "lstsq").plugin == "lstsq-plugin"

    result = run_audit(synthetic_config(translator={"plugin": "lstsq"}, report={"formats": ["json"]}), registry=registry)
    assert result.provenance.components["translator"]["plugin"] == "lstsq"
    fidelity = {m.name: m.fidelity for m in result.models}
    assert all(f.cosine is not None and f.cosine > 0.5 for f in fidelity.values()), fidelity
    # the planted leak is found with this translator too
    leaky = next(m for m in result.models if m.name == "leaky")
    assert {"sports car", "jellyfish"} <= set(leaky.flagged_classes)

    with pytest.raises(ConfigError, match="did you mean"):
        run_audit(synthetic_config(translator={"plugin": "lstsqq"}), registry=registry)
