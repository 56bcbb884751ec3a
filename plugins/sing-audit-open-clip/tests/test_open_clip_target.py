"""open_clip targets at random init and from local files (no hub access)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import save_file

from sing_audit.components import ImageTarget
from sing_audit.errors import ConfigError, WeightsError
from sing_audit_open_clip import target as oct_module
from sing_audit_open_clip.target import OpenClipTarget
from sing_audit.weights import file_digest, state_dict_digest

# The smallest CLIP config open_clip 3.3.0 ships (ViT-S/32 image tower, 256-d embeddings).
SMALL = "ViT-S-32-alt"
WIDTH = 256
SIZE = 64
TEMPLATES = ["an image of a {}", "a photo of the {}."]


def _build(**options) -> OpenClipTarget:
    t = OpenClipTarget(OpenClipTarget.Options(**options))
    t.load("cpu")
    return t


@pytest.fixture(scope="module")
def target():
    return _build(model=SMALL, weights="random", image_size=SIZE, templates=TEMPLATES)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def weight_file(target, tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    sd = {k: v.detach().clone().contiguous() for k, v in target.model.state_dict().items()}
    save_file(sd, str(d / "clip.safetensors"))
    torch.save({"model": sd}, d / "clip.pt")
    return d


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# --------------------------------------------------------------------------- random init


def test_image_embeddings(target, images):
    assert isinstance(target, ImageTarget) and target.random_weights is True
    z = target.encode_images(images)
    assert tuple(z.shape) == (2, WIDTH)
    # raw, not normalised
    assert not torch.allclose(z.norm(dim=-1), torch.ones(2), atol=1e-3)
    assert target.embedding_dim() == WIDTH


def test_text_embeddings_raw_float64(target):
    e = target.encode_text(["a dog", "a cat", "a tench"])
    assert e.shape == (3, WIDTH) and e.dtype == np.float64
    assert not np.allclose(np.linalg.norm(e, axis=1), 1.0)
    assert target.encode_text([]).shape == (0, WIDTH)


def test_text_batches_agree(target, monkeypatch):
    prompts = [f"a photo of thing {i}" for i in range(5)]
    whole = target.encode_text(prompts)
    monkeypatch.setattr(target, "text_batch_size", 2)
    np.testing.assert_allclose(target.encode_text(prompts), whole, rtol=1e-4, atol=1e-5)


def test_template_ensemble_is_unit_norm(target):
    names = ["dog", "cat", "golden retriever"]
    emb = target.class_text_embeddings(names)
    assert emb.shape == (3, WIDTH)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-12)
    # equals the mean of the normalised template embeddings, renormalised
    raw = target.encode_text([t.format(n) for n in names for t in TEMPLATES]).reshape(3, 2, WIDTH)
    raw /= np.linalg.norm(raw, axis=-1, keepdims=True)
    expected = raw.mean(axis=1)
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(emb, expected, atol=1e-10)


def test_transform(target):
    x = target.transform()(Image.new("RGB", (80, 50), (1, 2, 3)))
    assert tuple(x.shape) == (3, SIZE, SIZE)


def test_describe(target):
    d = target.describe()
    assert json.loads(json.dumps(d)) == d
    assert d["plugin"] == "open_clip" and d["model"] == SMALL
    assert d["weights"]["kind"] == "random" and d["random_weights"] is True and d["seed"] == 0
    assert d["weights_digest"] == state_dict_digest(target.model)
    assert d["image_size"] == SIZE and d["templates"] == TEMPLATES
    assert d["preprocessing"]["size"] == [SIZE, SIZE]
    assert "base_dir" not in json.dumps(d)


def test_seed_is_local_and_deterministic(target):
    state = torch.random.get_rng_state()
    again = _build(model=SMALL, weights="random", image_size=SIZE)
    assert torch.equal(state, torch.random.get_rng_state())
    assert again.weights_digest == target.weights_digest


def test_eva02_builds_at_random_init(images):
    eva = _build(model="EVA02-B-16", weights="random", image_size=SIZE)
    assert tuple(eva.encode_images(images).shape) == (2, 512)
    assert eva.encode_text(["a dog"]).shape == (1, 512)


# --------------------------------------------------------------------------- local files


@pytest.mark.parametrize("fname", ["clip.safetensors", "clip.pt"])
def test_file_roundtrip(fname, target, weight_file, images):
    loaded = _build(model=SMALL, weights=fname, image_size=SIZE, base_dir=weight_file)
    assert loaded.random_weights is False
    assert loaded.weights_digest == file_digest(weight_file / fname)
    assert state_dict_digest(loaded.model) == target.weights_digest
    assert torch.equal(loaded.encode_images(images), target.encode_images(images))
    np.testing.assert_array_equal(loaded.encode_text(["a dog"]), target.encode_text(["a dog"]))
    assert loaded.describe()["weights"]["kind"] == "file"


@pytest.mark.slow
def test_eva02_file_roundtrip_at_native_size(tmp_path):
    """EVA02 resizes its position embeddings with the image size, so its weights are saved
    and loaded at the native 224 px, through the loader users hit."""
    eva = _build(model="EVA02-B-16", weights="random")
    save_file({k: v.detach().clone().contiguous() for k, v in eva.model.state_dict().items()}, str(tmp_path / "eva.safetensors"))
    loaded = _build(model="EVA02-B-16", weights="eva.safetensors", base_dir=tmp_path)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    assert loaded.random_weights is False
    assert torch.equal(loaded.encode_images(x), eva.encode_images(x))
    np.testing.assert_array_equal(loaded.encode_text(["a dog"]), eva.encode_text(["a dog"]))
    del eva, loaded


def test_file_for_other_architecture(weight_file):
    t = OpenClipTarget({"model": "ViT-S-32", "weights": "clip.safetensors", "image_size": SIZE, "base_dir": weight_file})
    with pytest.raises(WeightsError, match="shape mismatch"):
        t.load("cpu")


def test_file_with_wrong_image_size(weight_file):
    t = OpenClipTarget({"model": SMALL, "weights": "clip.safetensors", "image_size": 96, "base_dir": weight_file})
    with pytest.raises(WeightsError, match="positional_embedding"):
        t.load("cpu")


def test_unsafe_pickle_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, tmp_path / "evil.bin")
    with pytest.raises(WeightsError, match="arbitrary code"):
        OpenClipTarget({"model": SMALL, "weights": "evil.bin", "base_dir": tmp_path}).load("cpu")


# --------------------------------------------------------------------------- hub (offline)


def test_pretrained_uses_first_tag_and_fails_offline(offline):
    t = OpenClipTarget({"model": "ViT-B-32", "image_size": SIZE})
    assert t.describe()["resolved_tag"] == "openai"
    start = time.monotonic()
    with pytest.raises(WeightsError) as err:
        t.load("cpu")
    assert time.monotonic() - start < 20
    msg = str(err.value)
    assert "'openai'" in msg and "could not be fetched" in msg and "weights: random" in msg


def test_tag_offline(offline):
    with pytest.raises(WeightsError, match="laion2b_s34b_b79k"):
        OpenClipTarget({"model": "ViT-B-32", "weights": "laion2b_s34b_b79k", "image_size": SIZE}).load("cpu")


def test_pretrained_without_tags():
    with pytest.raises(WeightsError, match="lists no pretrained weights"):
        OpenClipTarget({"model": SMALL}).load("cpu")


def test_unknown_tag_lists_known_ones():
    with pytest.raises(WeightsError, match="laion2b_s34b_b79k"):
        OpenClipTarget({"model": "ViT-B-32", "weights": "laion2b_s34b"}).load("cpu")


def test_unknown_model():
    with pytest.raises(ConfigError, match="ViT-B-32"):
        OpenClipTarget({"model": "ViT-B-33", "weights": "random"}).load("cpu")


def test_tokenizer_needing_download_is_a_weights_error(target, monkeypatch):
    import open_clip

    def fail(name, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(open_clip, "get_tokenizer", fail)
    with pytest.raises(WeightsError, match="tokenizer"):
        target._load_tokenizer(target.options.model)


# --------------------------------------------------------------------------- options, registration


@pytest.mark.parametrize("templates", [[], ["no slot"], ["a {} {name}"], ["{} and {}"]])
def test_bad_templates(templates):
    with pytest.raises(ValidationError):
        OpenClipTarget.Options(model=SMALL, templates=templates)


def test_default_templates():
    t = OpenClipTarget({"model": SMALL})
    assert list(t.templates) == ["an image of a {}"]
    assert OpenClipTarget.Options(model=SMALL, templates=["{{literal}} {}"]).templates == ["{{literal}} {}"]


def test_options_forbid_extra():
    with pytest.raises(ValidationError):
        OpenClipTarget.Options(model=SMALL, pretrained="openai")


def test_use_before_load():
    with pytest.raises(RuntimeError, match="load"):
        OpenClipTarget({"model": SMALL}).encode_text(["x"])


def test_registration():
    registered = {}
    oct_module.register_targets(register=lambda name, factory: registered.setdefault(name, factory))
    assert registered == {"open_clip": OpenClipTarget}


def test_the_family_registers_its_target_through_its_entry_point():
    from sing_audit.host import create_registry

    entry = create_registry().get("target", "open_clip")
    assert entry.factory is OpenClipTarget and entry.package.startswith("sing-audit-open-clip ")
