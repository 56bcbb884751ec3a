"""The plugin host: fresh managers, the registry, duplicates, entry-point plugins."""

from __future__ import annotations

import importlib
import sys
import textwrap
import types
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import sing_audit
from sing_audit import hookimpl
from sing_audit.errors import ConfigError, PluginError
from sing_audit.host import (
    BUILTIN_PACKAGE,
    DEFAULT_PLUGINS,
    KINDS,
    Registry,
    create_plugin_manager,
    create_registry,
)

BUILTIN_NAMES = {
    "backbone": {"precomputed", "torch_module"},
    "target": {"precomputed"},
    "translator": {"linear"},
    "probe": {"null_removal"},
    "dataset": {"image_folder", "image_list"},
    "reporter": {"json", "csv", "html"},
}


@pytest.fixture(autouse=True)
def _no_plugin_filter(monkeypatch):
    monkeypatch.delenv("SING_AUDIT_LOAD_PLUGINS", raising=False)


class _Factory:
    class Options:  # pragma: no cover - never instantiated here
        pass


def _plugin(kind_hook: str, *names: str):
    """A small plugin object implementing one register_* hook."""
    ns = types.SimpleNamespace()

    @hookimpl
    def hook(register):
        for n in names:
            register(n, _Factory)

    setattr(ns, kind_hook, hook)
    return ns


# --------------------------------------------------------------------------- managers


def test_create_plugin_manager_returns_fresh_managers():
    a = create_plugin_manager(load_entry_points=False)
    b = create_plugin_manager(load_entry_points=False)
    assert a is not b
    extra = _plugin("register_backbones", "only_in_a")
    a.register(extra, name="extra")
    assert "only_in_a" in create_registry(a).names("backbone")
    assert "only_in_a" not in create_registry(b).names("backbone")
    assert "only_in_a" not in create_registry(create_plugin_manager(load_entry_points=False)).names("backbone")


def test_builtins_are_registered_as_ordinary_plugin_modules():
    pm = create_plugin_manager(load_entry_points=False)
    for name in DEFAULT_PLUGINS:
        plugin = pm.get_plugin(name)
        assert isinstance(plugin, types.ModuleType) and plugin.__name__ == name
    assert sing_audit.hookimpl is hookimpl


def test_registry_has_builtin_names():
    reg = create_registry()
    assert isinstance(reg, Registry)
    for kind, names in BUILTIN_NAMES.items():
        assert names <= set(reg.names(kind)), kind
    for r in reg.all():
        assert r.kind in KINDS
        if r.name in BUILTIN_NAMES.get(r.kind, ()):
            assert r.package == BUILTIN_PACKAGE
            assert r.plugin in DEFAULT_PLUGINS
    # every built-in factory carries its options model
    assert reg.get("backbone", "precomputed").options_model is not None


def test_registry_get_suggests_close_names():
    reg = create_registry(create_plugin_manager(load_entry_points=False))
    with pytest.raises(ConfigError, match="did you mean") as err:
        reg.get("backbone", "precomputd", where="audit.yaml: backbones[0].plugin")
    assert '"precomputed"' in str(err.value)
    assert "backbones[0].plugin" in str(err.value)
    with pytest.raises(ConfigError, match="did you mean"):
        reg.get("reporter", "htm")
    with pytest.raises(ConfigError) as err:
        reg.get("translator", "zzzzzz")
    assert "linear" in str(err.value)  # no close match: the valid choices


# --------------------------------------------------------------------------- duplicates


def test_duplicate_name_from_two_plugins_names_both():
    pm = create_plugin_manager(load_entry_points=False)
    pm.register(_plugin("register_targets", "dup"), name="first_plugin")
    pm.register(_plugin("register_targets", "dup"), name="second_plugin")
    with pytest.raises(PluginError) as err:
        create_registry(pm)
    msg = str(err.value)
    assert "dup" in msg and "first_plugin" in msg and "second_plugin" in msg


def test_duplicate_of_a_builtin_name_names_the_builtin():
    pm = create_plugin_manager(load_entry_points=False)
    pm.register(_plugin("register_backbones", "precomputed"), name="impostor")
    with pytest.raises(PluginError) as err:
        create_registry(pm)
    assert "impostor" in str(err.value) and "sing_audit.builtins.precomputed" in str(err.value)


def test_same_name_in_two_kinds_is_fine():
    pm = create_plugin_manager(load_entry_points=False)
    pm.register(_plugin("register_concept_sets", "linear"), name="cs")
    reg = create_registry(pm)
    assert reg.get("concept_set", "linear").plugin == "cs"
    assert reg.get("translator", "linear").plugin == "sing_audit.builtins.linear_translator"


def test_invalid_registered_name_is_plugin_error():
    pm = create_plugin_manager(load_entry_points=False)
    pm.register(_plugin("register_probes", ""), name="blank")
    with pytest.raises(PluginError, match="blank"):
        create_registry(pm)


def test_hookimpl_without_arguments_and_with_only_register():
    calls = []

    class NoArgs:
        @hookimpl
        def register_visualizers(self):
            calls.append("noargs")

    class OnlyRegister:
        @hookimpl
        def register_visualizers(self, register):
            calls.append("register")
            register("heatmap", _Factory)

    pm = create_plugin_manager(load_entry_points=False)
    pm.register(NoArgs(), name="noargs")
    pm.register(OnlyRegister(), name="onlyreg")
    reg = create_registry(pm)
    assert sorted(calls) == ["noargs", "register"]
    got = reg.get("visualizer", "heatmap")
    assert got.factory is _Factory and got.plugin == "onlyreg" and got.package == BUILTIN_PACKAGE


# --------------------------------------------------------------------------- entry points


def _make_distribution(root: Path, dist: str, version: str, ep_name: str, module: str, body: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(body), encoding="utf-8")
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[sing_audit]\n{ep_name} = {module}\n", encoding="utf-8")


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A distribution `sing-audit-demo 1.2.3` with entry point `demo` on sys.path."""
    module = f"sa_demo_plugin_{uuid.uuid4().hex[:8]}"
    _make_distribution(
        tmp_path,
        "sing_audit_demo",
        "1.2.3",
        "demo",
        module,
        """
        from sing_audit import hookimpl

        class DemoBackbone:
            Options = None

        @hookimpl
        def register_backbones(register):
            register("demo_backbone", DemoBackbone)
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield module
    sys.modules.pop(module, None)
    importlib.invalidate_caches()


def test_entry_point_plugin_registers_with_its_package(installed_plugin):
    reg = create_registry()
    got = reg.get("backbone", "demo_backbone")
    assert got.plugin == "demo"
    assert "sing_audit_demo" in got.package.replace("-", "_") and "1.2.3" in got.package
    # the built-ins are still there
    assert {"precomputed", "timm"} <= set(reg.names("backbone"))


def test_load_plugins_empty_means_builtins_only(installed_plugin, monkeypatch):
    monkeypatch.setenv("SING_AUDIT_LOAD_PLUGINS", "")
    reg = create_registry()
    assert "demo_backbone" not in reg.names("backbone")
    assert BUILTIN_NAMES["backbone"] <= set(reg.names("backbone"))
    assert installed_plugin not in sys.modules  # not even imported


@pytest.mark.parametrize("allowed", ["demo", "sing_audit_demo", "other, demo"])
def test_load_plugins_names_the_plugin(installed_plugin, monkeypatch, allowed):
    monkeypatch.setenv("SING_AUDIT_LOAD_PLUGINS", allowed)
    assert "demo_backbone" in create_registry().names("backbone")


def test_load_plugins_other_name_skips_it(installed_plugin, monkeypatch):
    monkeypatch.setenv("SING_AUDIT_LOAD_PLUGINS", "something_else")
    assert "demo_backbone" not in create_registry().names("backbone")


def test_without_entry_points_flag(installed_plugin):
    reg = create_registry(create_plugin_manager(load_entry_points=False))
    assert "demo_backbone" not in reg.names("backbone")


def test_entry_point_duplicating_a_builtin_names_both_packages(tmp_path, monkeypatch):
    module = f"sa_dup_plugin_{uuid.uuid4().hex[:8]}"
    _make_distribution(
        tmp_path,
        "sing_audit_dup",
        "0.4.0",
        "dupplug",
        module,
        """
        from sing_audit import hookimpl

        @hookimpl
        def register_reporters(register):
            register("html", object)
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        with pytest.raises(PluginError) as err:
            create_registry()
        msg = str(err.value)
        assert "html" in msg and "dupplug" in msg and "0.4.0" in msg
        assert "sing_audit.builtins.reporters" in msg and "built-in" in msg
    finally:
        sys.modules.pop(module, None)


def test_plugin_failing_on_import_is_named(tmp_path, monkeypatch):
    module = f"sa_broken_plugin_{uuid.uuid4().hex[:8]}"
    _make_distribution(
        tmp_path,
        "sing_audit_broken",
        "0.0.1",
        "broken",
        module,
        """
        raise RuntimeError("kaboom at import")
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        with pytest.raises(PluginError) as err:
            create_plugin_manager()
        msg = str(err.value)
        assert "'broken'" in msg or "broken" in msg.split("(")[0]
        assert "sing_audit_broken" in msg.replace("-", "_")
        assert "kaboom at import" in msg
        # leaving it out by name works
        monkeypatch.setenv("SING_AUDIT_LOAD_PLUGINS", "")
        create_plugin_manager()
    finally:
        sys.modules.pop(module, None)


def test_two_distributions_with_the_same_entry_point_name(tmp_path, monkeypatch):
    """Two installed packages both name their entry point "shared": a PluginError naming
    both packages (like a duplicate component name), not pluggy's bare ValueError."""
    mods = []
    for i, (dist, comp) in enumerate([("sing_audit_one", "one_backbone"), ("sing_audit_two", "two_backbone")]):
        module = f"sa_same_ep_{i}_{uuid.uuid4().hex[:8]}"
        mods.append(module)
        root = tmp_path / f"site{i}"
        root.mkdir()
        _make_distribution(
            root,
            dist,
            "1.0",
            "shared",
            module,
            f"""
            from sing_audit import hookimpl

            @hookimpl
            def register_backbones(register):
                register({comp!r}, object)
            """,
        )
        monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    try:
        with pytest.raises(PluginError) as err:
            create_registry()
        msg = str(err.value)
        assert "shared" in msg and "sing_audit_one" in msg.replace("-", "_") and "sing_audit_two" in msg.replace("-", "_")
    finally:
        for m in mods:
            sys.modules.pop(m, None)


def test_plugin_with_invalid_hook_signature_is_plugin_error(tmp_path, monkeypatch):
    """A hookimpl asking for an argument the spec does not have is the plugin's fault:
    PluginError naming it (exit 2), not pluggy's PluginValidationError (exit 70)."""
    module = f"sa_badsig_{uuid.uuid4().hex[:8]}"
    _make_distribution(
        tmp_path,
        "sing_audit_badsig",
        "0.1",
        "badsig",
        module,
        """
        from sing_audit import hookimpl

        @hookimpl
        def register_backbones(register, config):
            register("x", object)
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        with pytest.raises(PluginError) as err:
            create_registry()
        assert "badsig" in str(err.value)
    finally:
        sys.modules.pop(module, None)


# --------------------------------------------------------------------------- head folders


class _DoubledLinear(torch.nn.Linear):
    """Logits ``2 (x Wᵀ + b)``: affine, but an nn.Linear subclass with its own forward."""

    def forward(self, x):
        return 2.0 * super().forward(x)


def doubled_head_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), _DoubledLinear(5, 3))


def _fold_doubled(module):
    from sing_audit.heads import Affine, linear_affine

    inner = linear_affine(module)
    return Affine(2.0 * inner.weight, 2.0 * inner.bias, inner.eps, "DoubledLinear")


def test_register_head_folders_reaches_the_torch_module_backbone(tmp_path):
    """A head folder registered through ``register_head_folders`` is in the registry (with
    its plugin) and folds a head the core refuses; without it the backbone fails."""
    from sing_audit.config import ComponentSpec
    from sing_audit.errors import HeadError
    from sing_audit.heads import type_path
    from sing_audit.host import BuildContext, create_component

    ns = types.SimpleNamespace()

    @hookimpl
    def register_head_folders(register):
        register(type_path(_DoubledLinear), _fold_doubled)

    ns.register_head_folders = register_head_folders
    pm = create_plugin_manager(load_entry_points=False)
    pm.register(ns, name="doubled")
    registry = create_registry(pm)
    entry = registry.get("head_folder", type_path(_DoubledLinear))
    assert entry.plugin == "doubled" and registry.head_folders()[entry.name] is _fold_doubled
    spec = ComponentSpec(plugin="torch_module", model=f"{__name__}:doubled_head_model", head="2", weights="factory", img_size=8)
    images = torch.rand(2, 3, 2, 2)

    backbone = create_component(BuildContext(registry, tmp_path, where="backbones[0]"), "backbone", spec).instance
    backbone.load("cpu")
    head = backbone.head()
    f = backbone.features(images).double().numpy()
    assert np.allclose(f @ head.weight.T + head.bias, backbone.logits(images).double().numpy(), atol=1e-5)

    bare = create_registry(create_plugin_manager(load_entry_points=False))
    plain = create_component(BuildContext(bare, tmp_path, where="backbones[0]"), "backbone", spec).instance
    with pytest.raises(HeadError, match="register_head_folders"):
        plain.load("cpu")
