"""``hf-hub:org/name[@revision]`` timm models, resolved offline through a hub cache laid out
like huggingface_hub's (``refs/<revision>`` -> ``snapshots/<commit>/``): the snapshot used
is the one the revision names, its commit is in ``describe()`` (provenance and cache key),
and a revision the cache does not hold fails at validation, saying how to fetch it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from sing_audit.errors import WeightsError
from sing_audit.store import content_key
from sing_audit_timm.backbone import TimmBackbone

SIZE = 32
MAIN = "1" * 40
V2 = "2" * 40
REPO = "someone/tiny-resnet"


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An HF_HOME in tmp_path whose hub cache holds REPO at two commits with different weights:
    ``main`` -> MAIN, tag ``v2`` -> V2. Returns ``(cache, {commit: the model saved there})``."""
    import timm
    from timm.models import save_for_hf

    from sing_audit.testing import fake_hub_repo

    cache, repo = fake_hub_repo(tmp_path / "hf-home", monkeypatch, REPO, {"main": MAIN, "v2": V2})
    models = {}
    for seed, commit in ((0, MAIN), (1, V2)):
        torch.manual_seed(seed)
        model = timm.create_model("resnet18", pretrained=False, num_classes=7).eval()
        saved = tmp_path / f"saved-{seed}"
        save_for_hf(model, str(saved), safe_serialization=True)
        shutil.copytree(saved, repo / "snapshots" / commit)
        models[commit] = model
    return cache, models


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "model, commit",
    [
        (f"hf-hub:{REPO}", MAIN),
        (f"hf-hub:{REPO}@main", MAIN),
        (f"hf-hub:{REPO}@v2", V2),
        (f"hf-hub:{REPO}@{V2}", V2),
        (f"hf_hub:{REPO}@v2", V2),
    ],
)
def test_revision_resolves_offline_to_its_snapshot(model, commit, offline, hub_cache, images):
    _, models = hub_cache
    b = TimmBackbone({"model": model, "img_size": SIZE})
    before = b.describe()["hub_revision"]
    assert before == {"repo": REPO, "revision": model.partition("@")[2] or "main", "commit": commit}
    b.load("cpu")
    after = b.describe()
    assert after["hub_revision"] == before and after["random_weights"] is False
    with torch.no_grad():
        expected = models[commit](images)
    assert torch.equal(b.logits(images), expected)  # the weights of that very snapshot, not the other one


def test_revisions_key_features_apart(offline, hub_cache):
    """Two revisions, or main before and after it moves, never share a cache key."""
    cache, _ = hub_cache
    main = TimmBackbone({"model": f"hf-hub:{REPO}", "img_size": SIZE}).describe()
    v2 = TimmBackbone({"model": f"hf-hub:{REPO}@v2", "img_size": SIZE}).describe()
    assert content_key(main) != content_key(v2)
    (Path(cache) / ("models--" + REPO.replace("/", "--")) / "refs" / "main").write_text(V2)
    moved = TimmBackbone({"model": f"hf-hub:{REPO}", "img_size": SIZE}).describe()
    assert moved["hub_revision"]["commit"] == V2
    assert content_key(moved) != content_key(main)


@pytest.mark.parametrize("revision", ["v3", "3" * 40])
def test_uncached_revision_fails_at_validation_with_the_fetch_command(revision, offline, hub_cache):
    with pytest.raises(WeightsError) as err:
        TimmBackbone({"model": f"hf-hub:{REPO}@{revision}", "img_size": SIZE})
    msg = str(err.value)
    assert f"revision {revision!r}" in msg and "HF_HUB_OFFLINE" in msg
    assert f"hf download {REPO} --revision {revision}" in msg


def test_empty_revision_is_refused(offline, hub_cache):
    with pytest.raises(WeightsError, match="names no revision"):
        TimmBackbone({"model": f"hf-hub:{REPO}@", "img_size": SIZE})


def test_random_weights_build_the_revisions_config(offline, hub_cache):
    """weights: random still reads the architecture from the revision's config.json (and records it)."""
    b = TimmBackbone({"model": f"hf-hub:{REPO}@v2", "weights": "random", "img_size": SIZE})
    b.load("cpu")
    d = b.describe()
    assert d["random_weights"] is True and d["hub_revision"]["commit"] == V2
    assert b.head().num_classes == 7


def test_online_asks_the_hub_which_commit_a_branch_names(hub_cache, monkeypatch, images):
    """Not offline: the hub's answer wins over a stale refs/main, and that commit is what loads."""
    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []

    def model_info(self, repo_id, revision=None, **kwargs):
        asked.append((repo_id, revision))
        return type("Info", (), {"sha": V2})()

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    _, models = hub_cache
    b = TimmBackbone({"model": f"hf-hub:{REPO}", "img_size": SIZE})
    assert b.describe()["hub_revision"]["commit"] == V2
    b.load("cpu")  # the snapshot of a commit hash is read from the cache without asking the hub again
    assert asked == [(REPO, "main")]
    with torch.no_grad():
        assert torch.equal(b.logits(images), models[V2](images))


def test_declared_feature_dim_reads_the_cached_config(offline, hub_cache):
    assert TimmBackbone({"model": f"hf-hub:{REPO}@v2", "img_size": SIZE}).declared_feature_dim() == 512
