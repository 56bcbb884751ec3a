"""open_clip models as users name them beyond built-in tags: ``hf-hub:org/repo[@revision]``
resolved offline through a hub cache in huggingface_hub's layout (``refs/<revision>`` ->
``snapshots/<commit>/``), ``local-dir:<folder>``, and training checkpoints as open_clip
writes them, all loaded back through the loader users hit."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sing_audit.errors import WeightsError
from sing_audit.store import content_key
from sing_audit_open_clip.target import OpenClipTarget

SMALL = "ViT-S-32-alt"
SIZE = 64
MAIN = "1" * 40
V2 = "2" * 40
REPO = "someone/tiny-clip"


def _random_clip(seed: int):
    import open_clip

    torch.manual_seed(seed)
    return open_clip.create_model(SMALL, force_image_size=SIZE).eval()


def _save_hub_folder(model, folder: Path, weights: str | None = "open_clip_model.safetensors") -> Path:
    """A folder as open_clip's push_to_hf_hub lays it out: open_clip_config.json (+ weights)."""
    import open_clip
    from open_clip.push_to_hf_hub import save_config_for_hf

    folder.mkdir(parents=True)
    cfg = open_clip.get_model_config(SMALL)
    cfg["vision_cfg"]["image_size"] = SIZE
    save_config_for_hf(model, folder / "open_clip_config.json", model_config=cfg)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if weights is not None and weights.endswith(".safetensors"):
        save_file(sd, str(folder / weights))
    elif weights is not None:
        torch.save(sd, folder / weights)
    return folder


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def models():
    return {MAIN: _random_clip(0), V2: _random_clip(1)}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, models):
    """HF_HOME in tmp_path with REPO at two commits (main -> MAIN, tag v2 -> V2), different weights."""
    from sing_audit.testing import fake_hub_repo

    _, repo = fake_hub_repo(tmp_path / "hf-home", monkeypatch, REPO, {"main": MAIN, "v2": V2})
    for commit, model in models.items():
        _save_hub_folder(model, repo / "snapshots" / commit)
    return repo


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _embeds(model, images):
    with torch.no_grad():
        return model.encode_image(images)


@pytest.mark.parametrize(
    "model, commit",
    [(f"hf-hub:{REPO}", MAIN), (f"hf-hub:{REPO}@main", MAIN), (f"hf-hub:{REPO}@v2", V2), (f"hf-hub:{REPO}@{V2}", V2)],
)
def test_hub_revision_loads_its_snapshot_offline(model, commit, offline, hub_cache, models, images):
    t = OpenClipTarget({"model": model})
    t.check()
    before = t.describe()["hub_revision"]
    assert before == {"repo": REPO, "revision": model.partition("@")[2] or "main", "commit": commit}
    t.load("cpu")
    assert t.describe()["hub_revision"] == before and t.random_weights is False
    assert torch.equal(t.encode_images(images), _embeds(models[commit], images))
    assert t.encode_text(["a dog"]).shape == (1, 256)


def test_hub_revisions_key_embeddings_apart(offline, hub_cache):
    main = OpenClipTarget({"model": f"hf-hub:{REPO}"}).describe()
    v2 = OpenClipTarget({"model": f"hf-hub:{REPO}@v2"}).describe()
    assert content_key(main) != content_key(v2)
    (hub_cache / "refs" / "main").write_text(V2)  # main moved on: a new key, never the old embeddings
    moved = OpenClipTarget({"model": f"hf-hub:{REPO}"}).describe()
    assert moved["hub_revision"]["commit"] == V2 and content_key(moved) != content_key(main)


def test_uncached_hub_revision_fails_in_the_preflight(offline, hub_cache):
    t = OpenClipTarget({"model": f"hf-hub:{REPO}@v3"})
    with pytest.raises(WeightsError) as err:
        t.check()
    assert "'v3'" in str(err.value) and f"hf download {REPO} --revision v3" in str(err.value)


def test_cached_revision_without_weights_fails_in_the_preflight(offline, hub_cache):
    (hub_cache / "snapshots" / V2 / "open_clip_model.safetensors").unlink()
    with pytest.raises(WeightsError, match=f"open_clip_model.safetensors or open_clip_pytorch_model.bin of hub repository {REPO}"):
        OpenClipTarget({"model": f"hf-hub:{REPO}@v2"}).check()


@pytest.mark.parametrize("weights_name", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_local_dir_relative_to_the_config(weights_name, tmp_path, offline, models, images):
    _save_hub_folder(models[V2], tmp_path / "models" / "clip", weights=weights_name)
    t = OpenClipTarget({"model": "local-dir:models/clip", "base_dir": tmp_path})
    t.check()  # offline: a local folder needs no hub
    key = content_key(t.describe())
    t.load("cpu")
    assert torch.equal(t.encode_images(images), _embeds(models[V2], images))
    assert t.describe()["files"][weights_name].startswith("sha256:")
    # other weights in the same folder: another key
    torch.manual_seed(5)
    _save_hub_folder(_random_clip(5), tmp_path / "other", weights=weights_name)
    shutil.copy(tmp_path / "other" / weights_name, tmp_path / "models" / "clip" / weights_name)
    assert content_key(OpenClipTarget({"model": "local-dir:models/clip", "base_dir": tmp_path}).describe()) != key


def test_local_dir_without_weights_is_never_random(tmp_path, models):
    _save_hub_folder(models[MAIN], tmp_path / "clip", weights=None)
    with pytest.raises(WeightsError, match="no weights.*never a silent fallback"):
        OpenClipTarget({"model": "local-dir:clip", "base_dir": tmp_path}).check()
    with pytest.raises(WeightsError, match="no weights"):
        OpenClipTarget({"model": "local-dir:clip", "base_dir": tmp_path}).load("cpu")
    with pytest.raises(WeightsError, match="has no open_clip_config.json"):
        OpenClipTarget({"model": "local-dir:.", "base_dir": tmp_path}).check()
    with pytest.raises(WeightsError, match="folder not found"):
        OpenClipTarget({"model": "local-dir:nowhere", "base_dir": tmp_path}).check()


def test_training_checkpoint_loads(tmp_path, models, images):
    """A checkpoint as open_clip's training writes it (DDP-prefixed state_dict beside epoch and optimizer)."""
    sd = models[MAIN].state_dict()
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, tmp_path / "epoch_3.pt")
    t = OpenClipTarget({"model": SMALL, "weights": "epoch_3.pt", "image_size": SIZE, "base_dir": tmp_path})
    t.load("cpu")
    assert t.random_weights is False
    assert torch.equal(t.encode_images(images), _embeds(models[MAIN], images))
    np.testing.assert_equal(t.describe()["weights"]["kind"], "file")
