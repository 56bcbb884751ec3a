"""audit.yaml: loading, error messages, overrides, plugin options and the JSON Schema."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from sing_audit.config import (
    AuditConfig,
    BackboneSpec,
    ComponentSpec,
    apply_overrides,
    load_config,
)
from sing_audit.errors import BadInputError, ConfigError
from sing_audit.host import BuildContext, create_plugin_manager, create_registry, resolve_options
from sing_audit.schema import config_schema

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "synthetic" / "audit.yaml"


def _base() -> dict:
    """The issue's shape: every top-level section present."""
    return {
        "name": "demo",
        "output": "runs/demo",
        "dataset": {"plugin": "image_folder", "root": "data/val"},
        "target": {"plugin": "precomputed", "name": "clip", "path": "data/clip.npz"},
        "backbones": [
            {"name": "resnet", "plugin": "precomputed", "path": "data/resnet.npz"},
            {"name": "vit", "plugin": "timm", "model": "vit_tiny_patch16_224", "weights": "random"},
        ],
        "translator": {"plugin": "linear", "alpha": "cv"},
        "nullspace": {"rule": "rank"},
        "probes": ["null_removal"],
        "policy": {"as_threshold": 4.0, "min_images": 10, "max_flagged": 0},
        "report": {"formats": ["json", "csv", "html"]},
    }


def _write(folder: Path, data: dict, name: str = "audit.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _error(path_or_data, overrides=None) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path_or_data, overrides)
    assert isinstance(err.value, BadInputError)
    return str(err.value)


@pytest.fixture(scope="module")
def registry():
    return create_registry(create_plugin_manager(load_entry_points=False))


# --------------------------------------------------------------------------- loading


def test_load_config_full_shape(tmp_path):
    path = _write(tmp_path / "cfg", _base())
    cfg = load_config(path)
    assert isinstance(cfg, AuditConfig)
    assert cfg.name == "demo"
    assert [b.name for b in cfg.backbones] == ["resnet", "vit"]
    assert cfg.backbones[1].plugin == "timm"
    assert cfg.backbones[1].options() == {"model": "vit_tiny_patch16_224", "weights": "random"}
    assert cfg.target_specs()[0].name == "clip"
    assert cfg.translator.plugin == "linear" and cfg.translator.options() == {"alpha": "cv"}
    assert cfg.nullspace.rule == "rank"
    assert [p.plugin for p in cfg.probe_specs()] == ["null_removal"]
    assert cfg.policy.as_threshold == 4.0 and cfg.policy.min_images == 10
    assert cfg.report.formats == ["json", "csv", "html"]
    assert cfg.dataset is not None and cfg.dataset.options() == {"root": "data/val"}


def test_defaults_for_optional_sections(tmp_path):
    data = {"output": "out", "target": {"plugin": "precomputed", "path": "c.npz"}, "backbones": [{"name": "a", "plugin": "precomputed", "path": "a.npz"}]}
    cfg = load_config(_write(tmp_path, data))
    assert cfg.translator.plugin == "linear"
    assert cfg.nullspace.rule == "rank"
    assert cfg.probes == ["null_removal"]
    assert cfg.policy.as_threshold == 4.0 and cfg.policy.min_images == 10 and cfg.policy.max_flagged == 0
    assert cfg.dataset is None


def test_targets_list(tmp_path):
    data = _base()
    del data["target"]
    data["targets"] = [{"plugin": "precomputed", "name": "clip", "path": "a.npz"}, {"plugin": "open_clip", "name": "eva"}]
    cfg = load_config(_write(tmp_path, data))
    assert [t.name for t in cfg.target_specs()] == ["clip", "eva"]


def test_relative_paths_resolve_against_config_folder(tmp_path, monkeypatch):
    path = _write(tmp_path / "configs" / "nested", _base())
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("configs/nested/audit.yaml"))
    folder = (tmp_path / "configs" / "nested").resolve()
    assert cfg.base_dir == folder
    assert cfg.output_dir == folder / "runs" / "demo"
    assert cfg.resolve_path("data/x.npz") == folder / "data" / "x.npz"
    assert cfg.resolve_path("/abs/x.npz") == Path("/abs/x.npz")
    assert path.is_file()


def test_example_config_loads():
    cfg = load_config(EXAMPLE)
    assert [b.name for b in cfg.backbones] == ["benign", "leaky"]
    assert cfg.base_dir == EXAMPLE.parent


# --------------------------------------------------------------------------- errors


def test_error_names_file_and_field_path(tmp_path):
    data = _base()
    del data["backbones"][0]["name"]
    data["policy"]["as_threshold"] = "four"
    path = _write(tmp_path, data)
    msg = _error(path)
    assert str(path) in msg
    assert "backbones[0].name" in msg
    assert "policy.as_threshold" in msg


def test_negative_threshold_is_rejected(tmp_path):
    data = _base()
    data["policy"]["as_threshold"] = -1
    assert "policy.as_threshold" in _error(_write(tmp_path, data))


@pytest.mark.parametrize(
    "mutate,where,suggestion",
    [
        (lambda d: d.update(polcy=d.pop("policy")), "polcy", '"policy"'),
        (lambda d: d["policy"].update(as_treshold=d["policy"].pop("as_threshold")), "policy.as_treshold", '"as_threshold"'),
        (lambda d: d["nullspace"].update(rul="rank"), "nullspace.rul", '"rule"'),
        (lambda d: d.update(reprot={"formats": ["json"]}), "reprot", '"report"'),
        (
            lambda d: d["policy"].update(waivers=[{"model": "vit", "class": 1, "reason": "ok", "expirs": "2030-01-01"}]),
            "policy.waivers[0].expirs",
            '"expires"',
        ),
    ],
)
def test_misspelled_key_did_you_mean(tmp_path, mutate, where, suggestion):
    data = _base()
    mutate(data)
    path = _write(tmp_path, data)
    msg = _error(path)
    line = next(line for line in msg.splitlines() if where in line)
    assert line.startswith(str(path))
    assert "did you mean" in line and suggestion in line


@pytest.mark.parametrize("which", ["both", "neither"])
def test_target_and_targets_exactly_one(tmp_path, which):
    data = _base()
    if which == "both":
        data["targets"] = [{"plugin": "precomputed", "path": "a.npz"}]
    else:
        del data["target"]
    msg = _error(_write(tmp_path, data))
    assert "target" in msg and "targets" in msg


def test_targets_need_distinct_names(tmp_path):
    data = _base()
    del data["target"]
    data["targets"] = [{"plugin": "precomputed", "path": "a.npz"}, {"plugin": "precomputed", "path": "b.npz"}]
    assert "name" in _error(_write(tmp_path, data))


def test_duplicate_backbone_names(tmp_path):
    data = _base()
    data["backbones"][1]["name"] = "resnet"
    msg = _error(_write(tmp_path, data))
    assert "unique" in msg and "resnet" in msg


@pytest.mark.parametrize("bad", ["", "has space", "../up", "-lead"])
def test_backbone_name_pattern(tmp_path, bad):
    data = _base()
    data["backbones"][0]["name"] = bad
    assert "backbones[0].name" in _error(_write(tmp_path, data))


def test_empty_backbones(tmp_path):
    data = _base()
    data["backbones"] = []
    assert "backbones" in _error(_write(tmp_path, data))


@pytest.mark.parametrize(
    "nullspace,needle",
    [
        ({"rule": "energy"}, "keep"),
        ({"rule": "fixed"}, "rank"),
        ({"rule": "energy", "keep": 1.5}, "keep"),
        ({"rule": "rank", "keep": 0.9}, "keep"),
        ({"rule": "fixed", "rank": 3, "rtol": 1e-6}, "rtol"),
        ({"rule": "energy", "keep": 0.9, "atol": 1e-5}, "atol"),
        ({"rule": "rank", "atol": 1e-5, "rtol": 1e-6}, "not both"),
        ({"rule": "rank", "atol": 0}, "atol"),
        ({"rule": "svd"}, "svd"),
    ],
)
def test_nullspace_rule_options(tmp_path, nullspace, needle):
    data = _base()
    data["nullspace"] = nullspace
    msg = _error(_write(tmp_path, data))
    assert "nullspace" in msg and needle in msg


def test_nullspace_valid_rules(tmp_path):
    for ns in ({"rule": "energy", "keep": 0.99}, {"rule": "fixed", "rank": 5}, {"rule": "rank", "rtol": 1e-6},
               {"rule": "rank", "atol": 1e-5}):
        data = _base()
        data["nullspace"] = ns
        assert load_config(_write(tmp_path, data)).nullspace.rule == ns["rule"]


@pytest.mark.parametrize("probes", [[], ["steering"], [{"plugin": "steering"}]])
def test_probes_must_include_a_headline_probe(tmp_path, probes):
    from sing_audit.host import create_registry

    data = _base()
    data["probes"] = probes
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, data), registry=create_registry())
    assert "headline role" in str(err.value) and "null_removal" in str(err.value)


def test_empty_probes_lack_the_headline_probe_without_a_registry(tmp_path):
    data = _base()
    data["probes"] = []
    msg = _error(_write(tmp_path, data))
    assert "headline role" in msg and "null_removal" in msg


def test_probes_as_names_or_specs(tmp_path):
    data = _base()
    data["probes"] = ["null_removal", {"plugin": "steering", "eps": 0.5}]
    cfg = load_config(_write(tmp_path, data))
    specs = cfg.probe_specs()
    assert [s.plugin for s in specs] == ["null_removal", "steering"]
    assert specs[1].options() == {"eps": 0.5}


def test_file_problems(tmp_path):
    assert "not found" in _error(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("output: [unclosed\n", encoding="utf-8")
    assert str(bad) in _error(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n", encoding="utf-8")
    assert str(lst) in _error(lst)


# --------------------------------------------------------------------------- overrides


def test_overrides_applied_before_validation(tmp_path):
    path = _write(tmp_path, _base())
    cfg = load_config(path, ["policy.as_threshold=3", "backbones.1.weights=random", "nullspace.rule=energy", "nullspace.keep=0.9"])
    assert cfg.policy.as_threshold == 3.0
    assert cfg.backbones[1].options()["weights"] == "random"
    assert cfg.nullspace.rule == "energy" and cfg.nullspace.keep == 0.9
    # values are parsed as YAML
    cfg = load_config(path, ["report.formats=[json]", "policy.max_flagged=2", "name=x=y"])
    assert cfg.report.formats == ["json"] and cfg.policy.max_flagged == 2 and cfg.name == "x=y"


def test_override_validation_errors_name_the_field(tmp_path):
    path = _write(tmp_path, _base())
    msg = _error(path, ["policy.as_treshold=3"])
    assert "policy.as_treshold" in msg and "did you mean" in msg


@pytest.mark.parametrize(
    "override",
    ["policy.as_threshold", "backbones.5.weights=random", "backbones.x.weights=random", "backbones.7=x", "=3", "...=3"],
)
def test_bad_overrides_are_config_errors(tmp_path, override):
    path = _write(tmp_path, _base())
    _error(path, [override])


def test_apply_overrides_creates_missing_sections():
    data = apply_overrides({"a": 1, "policy": None}, ["run.seed=3", "policy.min_images=2"])
    assert data == {"a": 1, "run": {"seed": 3}, "policy": {"min_images": 2}}
    with pytest.raises(ConfigError, match="index"):
        apply_overrides({}, ["backbones.0.name=x"])  # a list item that does not exist


def test_override_through_a_string_is_config_error():
    with pytest.raises(ConfigError):
        apply_overrides({"output": "runs/x"}, ["output.x.y=1"])


def test_override_through_a_number_is_config_error():
    with pytest.raises(ConfigError):
        apply_overrides({"policy": {"as_threshold": 4}}, ["policy.as_threshold.a.b=1"])


def test_override_a_loaded_config_object(tmp_path):
    data = _base()
    data["policy"]["waivers"] = [{"model": "vit", "class": 3, "reason": "ok", "expires": "2030-01-01"}]
    cfg = load_config(_write(tmp_path / "c", data))
    assert load_config(cfg) is cfg
    again = load_config(cfg, ["policy.max_flagged=4"])
    assert again.policy.max_flagged == 4
    assert again.base_dir == cfg.base_dir
    assert again.backbones == cfg.backbones and again.policy.waivers == cfg.policy.waivers
    assert again.policy.waivers[0].class_ == 3


def test_load_from_dict_does_not_mutate_input(tmp_path):
    data = _base()
    data["base_dir"] = str(tmp_path)
    before = copy.deepcopy(data)
    cfg = load_config(data, ["policy.as_threshold=1"])
    assert data == before
    assert cfg.policy.as_threshold == 1.0 and cfg.base_dir == tmp_path


# --------------------------------------------------------------------------- plugin options


def test_resolve_options_with_precomputed_backbone(registry, tmp_path):
    spec = BackboneSpec(name="b", plugin="precomputed", path="data/b.npz")
    reg, opts = resolve_options(BuildContext(registry, tmp_path, "audit.yaml", "backbones[0]"), "backbone", spec)
    assert reg.name == "precomputed"
    assert opts.path == Path("data/b.npz")
    assert opts.base_dir == tmp_path
    # the plugin resolves its relative path against the config's folder
    assert reg.factory(opts).path == tmp_path / "data" / "b.npz"


def test_resolve_options_unknown_key_did_you_mean(registry, tmp_path):
    spec = BackboneSpec(name="b", plugin="precomputed", pth="data/b.npz")
    with pytest.raises(ConfigError) as err:
        resolve_options(BuildContext(registry, tmp_path, "audit.yaml", "backbones[0]"), "backbone", spec)
    msg = str(err.value)
    assert "audit.yaml: backbones[0].pth" in msg
    assert 'did you mean "path"' in msg


def test_resolve_options_bad_type_and_unknown_plugin(registry, tmp_path):
    spec = BackboneSpec(name="b", plugin="precomputed", path="x.npz", random_weights="perhaps")
    with pytest.raises(ConfigError, match=r"backbones\[1\]\.random_weights"):
        resolve_options(BuildContext(registry, tmp_path, "audit.yaml", "backbones[1]"), "backbone", spec)
    spec = BackboneSpec(name="b", plugin="precomputd", path="x.npz")
    with pytest.raises(ConfigError, match="did you mean") as err:
        resolve_options(BuildContext(registry, tmp_path, "audit.yaml", "backbones[0]"), "backbone", spec)
    assert "backbones[0].plugin" in str(err.value)


def test_resolve_options_plugin_without_options_model(tmp_path):
    from sing_audit import hookimpl

    class Bare:
        pass

    class P:
        @hookimpl
        def register_probes(self, register):
            register("bare", Bare)

    pm = create_plugin_manager(load_entry_points=False)
    pm.register(P(), name="p")
    reg = create_registry(pm)
    context = BuildContext(reg, tmp_path, where="probes[1]")
    assert resolve_options(context, "probe", ComponentSpec(plugin="bare"))[1] is None
    with pytest.raises(ConfigError, match="no options"):
        resolve_options(context, "probe", ComponentSpec(plugin="bare", x=1))


# --------------------------------------------------------------------------- schema


def test_config_schema_is_valid_and_lists_plugins(registry):
    schema = config_schema(registry)
    jsonschema.Draft202012Validator.check_schema(schema)
    consts = {v["properties"]["plugin"]["const"] for v in schema["properties"]["backbones"]["items"]["oneOf"]}
    assert consts == set(registry.names("backbone"))
    assert "base_dir" not in schema["properties"]
    text = str(schema)
    for kind in ("target", "translator", "dataset"):
        for name in registry.names(kind):
            assert f"'const': '{name}'" in text


def test_config_schema_validates_the_example_and_rejects_unknown_plugin():
    # the demo is run with everything the set-up command installs (its pdf comes from sing-audit-pdf)
    schema = config_schema(create_registry())
    validator = jsonschema.Draft202012Validator(schema)
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert list(validator.iter_errors(data)) == []
    bad = copy.deepcopy(data)
    bad["backbones"][1]["plugin"] = "precomputd"
    assert not validator.is_valid(bad)
    bad = copy.deepcopy(data)
    bad["backbones"][0]["pth"] = "x.npz"
    assert not validator.is_valid(bad)
    bad = copy.deepcopy(data)
    bad["polcy"] = bad.pop("policy")
    assert not validator.is_valid(bad)
    bad = copy.deepcopy(data)
    bad["report"]["formats"] = ["docx"]
    assert not validator.is_valid(bad)



def test_config_schema_knows_every_report_key_and_each_reporters_options():
    """report.top_images, templates and options are valid keys; options are those of the
    format's own reporter, a typo or an unknown format is not."""
    validator = jsonschema.Draft202012Validator(config_schema(create_registry()))
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["report"] = {
        "formats": ["json", "sarif", "mlflow"],
        "top_images": 3,
        "templates": "tpl",
        "options": {"mlflow": {"tracking_uri": "sqlite:///m.db", "experiment": "e"}, "sarif": {}},
    }
    assert list(validator.iter_errors(data)) == []
    for options in ({"mlflow": {"tracking_ur": "x"}}, {"mlfow": {}}, {"csv": {"x": 1}}):
        bad = copy.deepcopy(data)
        bad["report"]["options"] = options
        assert not validator.is_valid(bad), options


def test_config_schema_accepts_the_full_shape():
    data = _base()
    data["policy"]["waivers"] = [{"model": "vit", "class": 3, "reason": "ok", "expires": "2030-01-01"}]
    # the installed families too: the shape names a timm backbone (plugins/sing-audit-timm)
    assert list(jsonschema.Draft202012Validator(config_schema(create_registry())).iter_errors(data)) == []
