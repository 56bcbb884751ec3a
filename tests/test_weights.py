"""Weights resolution, safe reading, digests and strict loading."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from sing_audit.errors import WeightsError
from sing_audit.weights import (
    HUB_WEIGHT_FILES,
    ResolvedWeights,
    file_digest,
    find_weights_in_folder,
    hub_cached_file,
    hub_offline,
    load_into,
    load_state_dict,
    local_weights_hint,
    resolve_weights,
    state_dict_digest,
)


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


class _Evil:
    """Unpickling this would create a marker file: a stand-in for arbitrary code."""

    marker: Path | None = None

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# --------------------------------------------------------------------------- resolve_weights


@pytest.mark.parametrize("spec", ["pretrained", "Pretrained", " pretrained ", None])
def test_resolve_pretrained(spec):
    assert resolve_weights(spec) == ResolvedWeights("pretrained", "pretrained", None)


def test_resolve_random():
    assert resolve_weights("random").kind == "random"
    assert resolve_weights("RANDOM").path is None


@pytest.mark.parametrize("tag", ["a1_in1k", "openai", "laion2b_s34b_b79k", "augreg_in21k_ft_in1k"])
def test_resolve_tag(tag, tmp_path):
    w = resolve_weights(tag, tmp_path)
    assert (w.kind, w.value, w.path) == ("tag", tag, None)


def test_resolve_file_relative_to_base_dir(tmp_path):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "w.safetensors"
    f.write_bytes(b"x")
    w = resolve_weights("sub/w.safetensors", tmp_path)
    assert w.kind == "file" and w.path == f.resolve() and w.value == "sub/w.safetensors"
    assert resolve_weights(str(f)).path == f.resolve()  # absolute paths ignore base_dir


def test_resolve_existing_file_without_suffix(tmp_path):
    (tmp_path / "myweights").write_bytes(b"x")
    w = resolve_weights("myweights", tmp_path)
    assert w.kind == "file" and w.path == (tmp_path / "myweights").resolve()


@pytest.mark.parametrize("spec", ["missing.pth", "missing.safetensors", "dir/missing", "W.BIN", "./x"])
def test_resolve_missing_file_names_path(spec, tmp_path):
    with pytest.raises(WeightsError) as err:
        resolve_weights(spec, tmp_path)
    assert str((tmp_path / spec).resolve()) in str(err.value)


def test_resolve_folder_and_empty(tmp_path):
    (tmp_path / "ckpt.pt").mkdir()
    with pytest.raises(WeightsError, match="folder .* holds no weights file"):
        resolve_weights("ckpt.pt", tmp_path)
    with pytest.raises(WeightsError, match="empty"):
        resolve_weights("  ")


def test_resolve_hub_layout_folder(net_and_sd, tmp_path):
    _, sd = net_and_sd
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    torch.save(sd, folder / "pytorch_model.bin")
    w = resolve_weights("my-model", tmp_path)  # a bare folder name counts as a path
    assert (w.kind, w.path, w.folder) == ("file", (folder / "pytorch_model.bin").resolve(), folder.resolve())
    assert w.as_dict() == {"kind": "file", "value": "my-model", "path": str(w.path), "folder": str(folder.resolve())}
    save_file(sd, str(folder / "model.safetensors"))  # safetensors wins, as in timm's local-dir loader
    assert resolve_weights(str(folder)).path == (folder / "model.safetensors").resolve()
    _assert_same(load_state_dict(resolve_weights(str(folder)).path), sd)


def test_find_weights_in_folder_order_and_ambiguity(net_and_sd, tmp_path):
    _, sd = net_and_sd
    for name in reversed(HUB_WEIGHT_FILES):
        save_file(sd, str(tmp_path / name)) if name.endswith(".safetensors") else torch.save(sd, tmp_path / name)
        assert find_weights_in_folder(tmp_path).name == name  # the earliest in the order present wins
    other = tmp_path / "other"
    other.mkdir()
    torch.save(sd, other / "epoch_10.pth")
    assert find_weights_in_folder(other).name == "epoch_10.pth"
    torch.save(sd, other / "epoch_20.pth")
    with pytest.raises(WeightsError, match="several .pth files .*epoch_10.pth, epoch_20.pth"):
        find_weights_in_folder(other)
    with pytest.raises(WeightsError, match="not found"):
        find_weights_in_folder(tmp_path / "nowhere")


@pytest.mark.parametrize("value, expected", [("1", True), ("ON", True), ("true", True), ("0", False), ("", False)])
def test_hub_offline_reads_env_and_constant(value, expected, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline() is expected
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert hub_offline() is True


def test_hub_cached_file_never_needs_network(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert hub_cached_file("org/model", ("model.safetensors",)) is None
    repo = tmp_path / "models--org--model"
    commit = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "pytorch_model.bin").write_bytes(b"x")
    assert hub_cached_file("org/model", ("model.safetensors",)) is None
    found = hub_cached_file("org/model", ("model.safetensors", "pytorch_model.bin"))
    assert found == repo / "snapshots" / commit / "pytorch_model.bin"
    assert hub_cached_file("org/model@" + commit, "pytorch_model.bin") == found  # timm's repo@revision
    assert hub_cached_file("not a valid id!", "x") is None


def test_local_weights_hint_says_how():
    hint = local_weights_hint("'resnet50.a1_in1k'")
    assert "resnet50.a1_in1k" in hint and "weights: <local file>" in hint and "config.json" in hint
    assert "weights: random" in hint


def test_resolved_as_dict_is_plain(tmp_path):
    f = tmp_path / "w.pt"
    f.write_bytes(b"x")
    d = resolve_weights("w.pt", tmp_path).as_dict()
    assert d == {"kind": "file", "value": "w.pt", "path": str(f.resolve())}


# --------------------------------------------------------------------------- load_state_dict


@pytest.fixture(scope="module")
def net_and_sd():
    net = _small_net()
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    return net, sd


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])


def test_safetensors_roundtrip(net_and_sd, tmp_path):
    _, sd = net_and_sd
    save_file(sd, str(tmp_path / "w.safetensors"))
    _assert_same(load_state_dict(tmp_path / "w.safetensors"), sd)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["plain", "state_dict", "model", "ddp", "nested-ddp"],
)
def test_torch_file_unwraps(net_and_sd, tmp_path, wrap):
    _, sd = net_and_sd
    torch.save(wrap(sd), tmp_path / "w.pth")
    _assert_same(load_state_dict(tmp_path / "w.pth"), sd)


def test_unknown_suffix_sniffs_format(net_and_sd, tmp_path):
    _, sd = net_and_sd
    save_file(sd, str(tmp_path / "weights.ckpt"))
    torch.save(sd, tmp_path / "weights2.ckpt")
    _assert_same(load_state_dict(tmp_path / "weights.ckpt"), sd)
    _assert_same(load_state_dict(tmp_path / "weights2.ckpt"), sd)


def test_pickle_with_object_is_refused(net_and_sd, tmp_path):
    _, sd = net_and_sd
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    torch.save({"state_dict": sd, "extra": evil}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError) as err:
        load_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()
    msg = str(err.value)
    assert "arbitrary code" in msg and "state_dict()" in msg and "\n" not in msg


def test_pickled_module_is_refused(tmp_path):
    torch.save(_small_net(), tmp_path / "model.pt")
    with pytest.raises(WeightsError, match="other than tensors"):
        load_state_dict(tmp_path / "model.pt")


@pytest.mark.parametrize("name", ["bad.pt", "bad.pth", "bad.bin", "bad.safetensors"])
def test_corrupt_file(name, tmp_path):
    (tmp_path / name).write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(WeightsError) as err:
        load_state_dict(tmp_path / name)
    assert "cannot be read" in str(err.value) and str(tmp_path / name) in str(err.value)


def test_truncated_file(net_and_sd, tmp_path):
    _, sd = net_and_sd
    torch.save(sd, tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt"):
        load_state_dict(tmp_path / "t.pt")


def test_not_a_state_dict(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="not a state dict"):
        load_state_dict(tmp_path / "list.pt")
    torch.save({"a": torch.ones(2), "b": 3}, tmp_path / "mixed.pt")
    with pytest.raises(WeightsError, match="not tensors"):
        load_state_dict(tmp_path / "mixed.pt")


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_state_dict(tmp_path / "nope.pt")


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_refused(tmp_path):
    torch.jit.script(nn.Linear(2, 2)).save(str(tmp_path / "scripted.pt"))
    with pytest.raises(WeightsError, match="TorchScript"):
        load_state_dict(tmp_path / "scripted.pt")


# --------------------------------------------------------------------------- digests


def test_file_digest_matches_hashlib(tmp_path):
    data = bytes(range(256)) * 5000
    (tmp_path / "f.bin").write_bytes(data)
    assert file_digest(tmp_path / "f.bin") == "sha256:" + hashlib.sha256(data).hexdigest()


def test_state_dict_digest_properties(net_and_sd):
    net, sd = net_and_sd
    d = state_dict_digest(net)
    assert d.startswith("sha256:") and len(d) == 7 + 64
    assert state_dict_digest(sd) == d
    assert state_dict_digest(dict(reversed(list(sd.items())))) == d  # order-free
    changed = {k: v.clone() for k, v in sd.items()}
    changed["0.weight"][0, 0] += 1e-6
    assert state_dict_digest(changed) != d
    renamed = {("x" + k if k == "0.bias" else k): v for k, v in sd.items()}
    assert state_dict_digest(renamed) != d
    assert state_dict_digest({k: v.double() for k, v in sd.items()}) != d
    reshaped = dict(sd)
    reshaped["0.weight"] = sd["0.weight"].reshape(4, 3)
    assert state_dict_digest(reshaped) != d


def test_state_dict_digest_odd_dtypes():
    sd = {"a": torch.ones(3, dtype=torch.bfloat16), "b": torch.tensor(True), "c": torch.zeros(0), "d": torch.arange(4)[::2]}
    assert state_dict_digest(sd) == state_dict_digest({k: v.clone() for k, v in sd.items()})


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=8), st.integers(0, 7))
def test_state_dict_digest_sees_every_value(values, pos):
    t = torch.tensor(values, dtype=torch.float32)
    pos = pos % len(values)
    other = t.clone()
    other[pos] = torch.nextafter(other[pos], torch.tensor(float("inf")))
    assert state_dict_digest({"w": t}) == state_dict_digest({"w": t.clone()})
    assert state_dict_digest({"w": t}) != state_dict_digest({"w": other})


# --------------------------------------------------------------------------- load_into


def test_load_into_roundtrip(net_and_sd):
    net, sd = net_and_sd
    fresh = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    load_into(fresh, sd, what="test net")
    assert state_dict_digest(fresh) == state_dict_digest(net)


def test_load_into_mismatch_lists_keys():
    target = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    sd = {"0.weight": torch.zeros(5, 4), "0.bias": torch.zeros(5), "extra.weight": torch.zeros(1)}
    with pytest.raises(WeightsError) as err:
        load_into(target, sd, what="my model")
    msg = str(err.value)
    assert "my model" in msg
    assert "2 missing key(s)" in msg and "2.weight" in msg and "2.bias" in msg
    assert "1 unexpected key(s)" in msg and "extra.weight" in msg
    assert "0.weight: file [5, 4] vs model [3, 4]" in msg
    assert "same model" in msg


def test_load_into_prefix_hint(net_and_sd):
    _, sd = net_and_sd
    target = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(WeightsError, match="start with 'backbone.'"):
        load_into(target, {f"backbone.{k}": v for k, v in sd.items()}, what="net")


def test_load_into_many_keys_truncated():
    target = nn.Sequential(*[nn.Linear(2, 2) for _ in range(10)])
    with pytest.raises(WeightsError) as err:
        load_into(target, {"x": torch.zeros(1)}, what="net")
    assert "20 missing key(s)" in str(err.value) and "more" in str(err.value)


# --------------------------------------------------------------------------- hub revisions


def _cache_with_refs(tmp_path, monkeypatch, refs: dict[str, str]):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    repo = tmp_path / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    for ref, commit in refs.items():
        (repo / "refs" / ref).write_text(commit + "\n")
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    return repo


def test_split_hub_id():
    from sing_audit.weights import split_hub_id

    assert split_hub_id("org/model") == ("org/model", None)
    assert split_hub_id("org/model@v2") == ("org/model", "v2")
    with pytest.raises(WeightsError, match="names no revision"):
        split_hub_id("org/model@")


def test_hub_cached_commit_reads_refs_and_needs_the_snapshot(tmp_path, monkeypatch):
    from sing_audit.weights import hub_cached_commit

    repo = _cache_with_refs(tmp_path, monkeypatch, {"main": "a" * 40, "v2": "b" * 40})
    assert hub_cached_commit("org/model") == "a" * 40
    assert hub_cached_commit("org/model", "v2") == "b" * 40
    assert hub_cached_commit("org/model", "b" * 40) == "b" * 40
    assert hub_cached_commit("org/model", "c" * 40) is None  # no such snapshot
    assert hub_cached_commit("org/model", "v3") is None
    assert hub_cached_commit("org/other") is None
    (repo / "refs" / "broken").write_text("d" * 40)  # a ref to a snapshot that is gone
    assert hub_cached_commit("org/model", "broken") is None


def test_resolve_hub_commit_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from sing_audit.weights import resolve_hub_commit

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _cache_with_refs(tmp_path, monkeypatch, {"main": "a" * 40})
    assert resolve_hub_commit("org/model") == "a" * 40
    with pytest.raises(WeightsError) as err:
        resolve_hub_commit("org/model", "v3", what="my model")
    msg = str(err.value)
    assert "'v3'" in msg and "(my model)" in msg and "hf download org/model --revision v3" in msg
    assert str(huggingface_hub.constants.HF_HUB_CACHE) in msg and "HF_HUB_OFFLINE" in msg
    with pytest.raises(WeightsError, match="hf download org/model --revision " + "c" * 40):
        resolve_hub_commit("org/model", "c" * 40)  # a commit hash whose snapshot is not here


def test_resolve_hub_commit_online_asks_the_hub_then_falls_back_to_the_cache(tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants

    from sing_audit.weights import resolve_hub_commit

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    _cache_with_refs(tmp_path, monkeypatch, {"main": "a" * 40})
    answer = {"sha": "b" * 40}

    def model_info(self, repo_id, revision=None, **kwargs):
        if answer["sha"] is None:
            raise OSError("network is unreachable")
        return type("Info", (), {"sha": answer["sha"]})()

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    assert resolve_hub_commit("org/model") == "b" * 40  # the hub's main moved on: it wins over the cache
    answer["sha"] = None
    assert resolve_hub_commit("org/model") == "a" * 40  # unreachable: the cache answers
    with pytest.raises(WeightsError, match="could not be asked \\(OSError\\).*hf download org/model --revision v9"):
        resolve_hub_commit("org/model", "v9")
