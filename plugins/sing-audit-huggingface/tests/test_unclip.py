"""The ``karlo`` target and the ``unclip`` visualizer on a tiny random Karlo pipeline."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sing_audit.errors import ConfigError, WeightsError

from sing_audit.synthetic import write_scenario
from sing_audit.testing import image_folder_audit, synthetic_audit
from unclip_fixtures import EMBED_DIM, IMAGE_SIZE, build_tiny_karlo

STEPS = {"decoder_steps": 2, "super_res_steps": 2}


@pytest.fixture(scope="module")
def scenario_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenario")
    write_scenario(folder)
    return folder


@pytest.fixture
def synthetic_config(tmp_path, scenario_dir):
    """A function: extra keys -> path of a config auditing the synthetic scenario."""
    return lambda **extra: synthetic_audit(tmp_path, scenario_dir, **extra)


@pytest.fixture(scope="session")
def karlo_dir(tmp_path_factory):
    return build_tiny_karlo(tmp_path_factory.mktemp("karlo") / "karlo")


@pytest.fixture(scope="module")
def target(karlo_dir):
    from sing_audit_huggingface.karlo import KarloTarget

    t = KarloTarget({"weights": str(karlo_dir)})
    t.load("cpu")
    return t


@pytest.fixture(scope="module")
def visualizer(karlo_dir):
    from sing_audit_huggingface.unclip import UnclipVisualizer

    v = UnclipVisualizer({"weights": str(karlo_dir), **STEPS})
    v.load("cpu")
    return v


def _image(size=(IMAGE_SIZE, IMAGE_SIZE), seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


# --------------------------------------------------------------------------- target


def test_karlo_target_loads_a_hub_layout_folder_and_matches_direct_computation(target, karlo_dir):
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    img = _image(size=(40, 48))
    x = torch.stack([target.transform()(img)])
    got = target.encode_images(x)
    assert got.shape == (1, EMBED_DIM) and target.random_weights is False
    vision = CLIPVisionModelWithProjection.from_pretrained(karlo_dir / "image_encoder").eval()
    pixels = CLIPImageProcessor.from_pretrained(karlo_dir / "feature_extractor")(images=img, return_tensors="pt").pixel_values
    with torch.no_grad():
        assert torch.equal(got, vision(pixel_values=pixels).image_embeds)

    text = CLIPTextModelWithProjection.from_pretrained(karlo_dir / "text_encoder").eval()
    tok = CLIPTokenizer.from_pretrained(karlo_dir / "tokenizer")
    ids = tok(["an image of a tench", ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        want = text(ids).text_embeds.double().numpy()
    # cut after the longest prompt's end of text: float32 rounding of other matmul shapes only
    np.testing.assert_allclose(target.encode_text(["an image of a tench", ""]), want, rtol=0, atol=1e-5)
    assert target.class_text_embeddings(["tench", "goldfish"]).shape == (2, EMBED_DIM)

    # float pixels at the model's size: the same input as the 8-bit path, without quantisation
    img32 = _image()
    floats = torch.as_tensor(np.array(img32), dtype=torch.float64).permute(2, 0, 1)[None] / 255.0
    np.testing.assert_allclose(
        target.encode_pixels(floats).numpy(), target.encode_images(target.transform()(img32)[None]).numpy(), atol=1e-5
    )
    assert target.encode_pixels(torch.rand(2, 3, 40, 56)).shape == (2, EMBED_DIM)

    d = target.describe()
    assert d["plugin"] == "karlo" and d["source"]["kind"] == "folder" and d["weights_digest"].startswith("sha256:")


@pytest.mark.parametrize("legacy_eos", [False, True])
def test_karlo_text_cut_after_the_end_of_text_equals_the_full_context(target, monkeypatch, legacy_eos):
    """Length-sorted batches cut after their longest prompt's pooled token give the
    full-context ``text_embeds`` in the input order, under both of transformers' pooling
    rules (first eos; the legacy eos_token_id 2: argmax of the ids, the end of text being
    the highest). Tolerance: float32 forward, compared in float64 on unit vectors; the
    only difference is the rounding of differently shaped matmuls (float32 eps 1.2e-7 per
    operation through one tiny layer)."""
    import torch

    tower = target.text_encoder.text_model
    if legacy_eos:
        monkeypatch.setattr(tower, "eos_token_id", 2)
    prompts = ["an image of a tench", "", "a", "an image of a tench", "x" * 200, "an image of a great white shark",
               "a"]
    monkeypatch.setattr(target, "text_batch_size", 2)
    seen = []
    handle = tower.embeddings.token_embedding.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        got = target.encode_text(prompts)
    finally:
        handle.remove()
    ids = target.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.inference_mode():
        want = target.text_encoder(ids).text_embeds.double().numpy()

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    assert np.abs(unit(got) - unit(want)).max() < 1e-5
    np.testing.assert_array_equal(got[0], got[3])
    # five distinct prompts, shortest first; only the one past the context needs all 77 tokens
    assert [b for b, _ in seen] == [2, 2, 1] and seen[0][1] < seen[1][1] < seen[2][1] == 77


def test_karlo_text_tower_of_another_kind_keeps_the_full_context(target, monkeypatch, caplog):
    import logging

    import torch

    class Other(torch.nn.Module):  # not transformers' CLIPTextModel: its pooling is unknown
        def forward(self, input_ids):
            seen.append(tuple(input_ids.shape))
            return type("Out", (), {"text_embeds": torch.ones(input_ids.shape[0], EMBED_DIM)})()

    seen = []
    monkeypatch.setattr(target, "text_encoder", Other())
    caplog.set_level(logging.DEBUG, logger="sing_audit")
    assert target.encode_text(["a", "an image of a tench"]).shape == (2, EMBED_DIM)
    assert seen == [(2, 77)] and "full context length" in caplog.text


def test_model_folder_is_the_same_source_and_the_digest_follows_the_weights(karlo_dir, tmp_path):
    import torch
    from transformers import CLIPVisionModelWithProjection

    from sing_audit_huggingface.karlo import KarloTarget

    by_model = KarloTarget({"model": str(karlo_dir)})
    by_weights = KarloTarget({"weights": str(karlo_dir)})
    assert by_model.source == by_weights.source
    assert by_model.describe()["weights_digest"] == by_weights.describe()["weights_digest"]

    copy = shutil.copytree(karlo_dir, tmp_path / "copy", ignore=shutil.ignore_patterns("decoder*", "super_res*"))
    vision = CLIPVisionModelWithProjection.from_pretrained(copy / "image_encoder")
    with torch.no_grad():
        vision.visual_projection.weight.add_(1.0)
    vision.save_pretrained(copy / "image_encoder")
    assert KarloTarget({"weights": str(copy)}).describe()["weights_digest"] != by_weights.describe()["weights_digest"]


def test_uncached_hub_repository_offline_fails_clearly(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from sing_audit_huggingface.karlo import KarloTarget
    from sing_audit_huggingface.unclip import UnclipVisualizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    for options in ({}, {"weights": "v1.0"}, {"model": "someone/karlo-copy"}):
        with pytest.raises(WeightsError, match="not in the local cache") as err:
            KarloTarget(options)
        assert "weights: <folder>" in str(err.value) and "huggingface-cli download" in str(err.value)
    with pytest.raises(WeightsError, match="not in the local cache"):
        UnclipVisualizer({"model": "kakaobrain/karlo-v1-alpha-image-variations"})
    for missing in (str(tmp_path / "nowhere"), "missing/karlo"):
        with pytest.raises(WeightsError, match="Karlo weights folder not found"):
            KarloTarget({"weights": missing, "base_dir": tmp_path})


def _fake_hub_cache(cache, repo, karlo_dir, parts, commit):
    """``karlo_dir``'s ``parts`` laid out as the hub cache keeps a download (blobs + snapshot links)."""
    import hashlib

    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "blobs").mkdir()
    for part in parts:
        for f in (karlo_dir / part).iterdir():
            blob = root / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            shutil.copyfile(f, blob)
            link = root / "snapshots" / commit / part / f.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(blob)


def test_a_cached_hub_repository_loads_offline_and_a_revision_not_cached_is_refused(
    karlo_dir, target, tmp_path, monkeypatch
):
    import huggingface_hub.constants
    import torch

    from sing_audit_huggingface.karlo import KarloTarget
    from sing_audit_huggingface.karlo_source import TARGET_PARTS

    commit = "a" * 40
    _fake_hub_cache(tmp_path / "hub", "sing-test/karlo-tiny", karlo_dir, TARGET_PARTS, commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for weights in ("pretrained", commit):
        hub = KarloTarget({"model": "sing-test/karlo-tiny", "weights": weights})
        assert hub.describe()["weights_digest"].startswith("sha256:")
        hub.load("cpu")
        x = torch.stack([target.transform()(_image())])
        assert torch.equal(hub.encode_images(x), target.encode_images(x)) and hub.random_weights is False
    with pytest.raises(WeightsError, match="at revision 'v2' is not in the local cache"):
        KarloTarget({"model": "sing-test/karlo-tiny", "weights": "v2"})


def test_a_folder_without_weights_fails_at_load_never_falls_back_to_random(karlo_dir, tmp_path):
    from sing_audit_huggingface.karlo import KarloTarget

    broken = tmp_path / "broken"
    for part in ("image_encoder", "feature_extractor", "text_encoder", "tokenizer"):
        shutil.copytree(karlo_dir / part, broken / part, ignore=shutil.ignore_patterns("*.safetensors"))
    t = KarloTarget({"weights": str(broken)})
    with pytest.raises(WeightsError, match="image_encoder.*could not be loaded"):
        t.load("cpu")
    with pytest.raises(WeightsError, match="lacks image_encoder/config.json"):
        KarloTarget({"weights": str(tmp_path)})  # no subfolders at all
    from sing_audit_huggingface.unclip import UnclipVisualizer

    # the target needs only the CLIP towers; the visualizer needs the whole pipeline
    with pytest.raises(WeightsError, match="lacks text_proj/config.json, decoder/config.json"):
        UnclipVisualizer({"weights": str(broken)})


def test_random_weights_only_when_asked(karlo_dir, target):
    import torch

    from sing_audit_huggingface.karlo import KarloTarget

    x = torch.stack([target.transform()(_image())])
    first = KarloTarget({"model": str(karlo_dir), "weights": "random", "seed": 3})
    assert first.random_weights is True
    first.load("cpu")
    again = KarloTarget({"model": str(karlo_dir), "weights": "random", "seed": 3})
    again.load("cpu")
    assert torch.equal(first.encode_images(x), again.encode_images(x))
    assert not torch.equal(first.encode_images(x), target.encode_images(x))
    assert first.describe()["random_weights"] is True and target.describe()["random_weights"] is False
    from sing_audit_huggingface.unclip import UnclipVisualizer

    vis = UnclipVisualizer({})
    assert vis.check_target(first) is None and vis.check_target(target) is None  # before binding: any karlo target
    vis.bind(first)
    assert vis.random_weights is True and "same folder" in vis.check_target(target)
    assert UnclipVisualizer({"weights": str(karlo_dir)}).random_weights is False


# --------------------------------------------------------------------------- rendering


def test_same_seed_and_embedding_give_the_same_image_and_a_pair_differs_only_by_its_embeddings(visualizer):
    rng = np.random.default_rng(1)
    e, other = rng.normal(size=(2, EMBED_DIM))
    [(o, q)] = visualizer.render(e[None], e[None].copy(), [11])
    o, q = np.asarray(o), np.asarray(q)
    assert o.shape == (32, 32, 3) and np.array_equal(o, q)  # equal embeddings: equal pictures
    [(o2, q2)] = visualizer.render(e[None], other[None], [11])
    o2, q2 = np.asarray(o2), np.asarray(q2)
    assert np.array_equal(o2, o)  # same seed and embedding in another call: bit for bit
    assert not np.array_equal(o2, q2)  # different embeddings: different pictures
    assert not np.array_equal(np.asarray(visualizer.render_one(e, 12)), o)  # the seed matters
    with pytest.raises(ValueError, match="one seed per pair"):
        visualizer.render(e[None], other[None], [1, 2])


def test_both_renders_of_a_pair_see_identical_noise_at_every_step_of_both_stages(visualizer, monkeypatch):
    import diffusers.schedulers.scheduling_unclip as sched
    import torch

    pipeline_cls = type(visualizer.pipeline)
    calls, step_noise = [], []
    original_call, original_randn = pipeline_cls.__call__, sched.randn_tensor

    def call(self, *args, **kwargs):
        calls.append({k: kwargs[k].clone() for k in ("decoder_latents", "super_res_latents")})
        step_noise.append([])
        return original_call(self, *args, **kwargs)

    def randn(*args, **kwargs):
        out = original_randn(*args, **kwargs)
        step_noise[-1].append(out.clone())
        return out

    monkeypatch.setattr(pipeline_cls, "__call__", call)
    monkeypatch.setattr(sched, "randn_tensor", randn)
    rng = np.random.default_rng(2)
    visualizer.render(rng.normal(size=(1, EMBED_DIM)), rng.normal(size=(1, EMBED_DIM)), [123])
    assert len(calls) == 2 and len(step_noise) == 2
    for name in ("decoder_latents", "super_res_latents"):
        assert torch.equal(calls[0][name], calls[1][name])
    assert calls[0]["decoder_latents"].shape[-1] == 16 and calls[0]["super_res_latents"].shape[-1] == 32
    shapes = [tuple(n.shape) for n in step_noise[0]]
    assert (1, 3, 16, 16) in shapes and (1, 3, 32, 32) in shapes  # noise drawn in both stages
    assert len(step_noise[0]) == len(step_noise[1])
    assert all(torch.equal(a, b) for a, b in zip(step_noise[0], step_noise[1]))


def test_match_norms_and_pair_seeds():
    from sing_audit.visualize import match_norms, pair_seed

    orig = np.array([[3.0, 4.0], [1.0, 0.0], [2.0, 0.0]])
    eq = np.array([[0.0, 2.0], [0.0, 0.0], [-1.0, 1.0]])
    got = match_norms(eq, orig)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), [5.0, 0.0, 2.0])
    np.testing.assert_allclose(got[0], [0.0, 5.0])
    np.testing.assert_allclose(got[2] / np.linalg.norm(got[2]), eq[2] / np.linalg.norm(eq[2]))
    assert pair_seed(0, "a/b.png") == pair_seed(0, "a/b.png") != pair_seed(1, "a/b.png") != pair_seed(0, "a/c.png")
    assert 0 <= pair_seed(0, "x") < 2**32


# --------------------------------------------------------------------------- runner


def test_visualizer_without_a_compatible_target_is_a_config_error(synthetic_config, karlo_dir, tmp_path):
    from sing_audit.config import load_config
    from sing_audit.host import create_registry
    from sing_audit.pipeline import build_plan

    registry = create_registry()
    cfg = load_config(synthetic_config(visualizer={"plugin": "unclip", "weights": str(karlo_dir)}))
    with pytest.raises(ConfigError, match="visualizer.*karlo target"):
        build_plan(cfg, registry)

    (tmp_path / "img" / "a").mkdir(parents=True)
    _image().save(tmp_path / "img" / "a" / "0.png")
    data = {
        "output": str(tmp_path / "o"),
        "dataset": {"plugin": "image_folder", "root": str(tmp_path / "img")},
        "target": {"plugin": "karlo", "model": str(karlo_dir), "weights": "random"},
        "backbones": [{"name": "r", "plugin": "timm", "model": "resnet18", "weights": "random"}],
        "visualizer": {"plugin": "unclip", "weights": str(karlo_dir)},
    }
    with pytest.raises(ConfigError, match="same folder or hub repository"):
        build_plan(load_config(data), registry)
    data["visualizer"] = {"plugin": "unclip", "target": "clip"}
    with pytest.raises(ConfigError, match="visualizer.target: no target is named 'clip'"):
        build_plan(load_config(data), registry)


@pytest.mark.slow
def test_run_renders_pairs_into_the_run_folder_and_the_report(tmp_path, karlo_dir, monkeypatch):
    from sing_audit.cli import main
    from sing_audit_huggingface.unclip import UnclipVisualizer
    from sing_audit.synthetic import SYNSETS

    cfg = image_folder_audit(
        tmp_path,
        [{"name": "cnn", "plugin": "torch_module", "model": "unclip_fixtures:tiny_cnn", "head": "head",
          "weights": "random", "img_size": 32, "class_names": ["tench", "goldfish", "shark"]}],
        per_class=3,
        dataset={"class_map": {s: i for i, s in enumerate(SYNSETS)}},
        target={"plugin": "karlo", "name": "karlo", "weights": str(karlo_dir)},
        visualizer={"plugin": "unclip", "max_images": 1, **STEPS},
        report={"formats": ["json", "html"], "top_images": 3},
    )
    assert main(["run", str(cfg)]) in (0, 1)
    out = tmp_path / "out"
    result = json.loads((out / "results.json").read_text())
    [model] = result["models"]
    renderings = model["probes"]["renderings"]
    assert renderings["plugin"] == "unclip" and renderings["describe"]["source"]["location"] == str(karlo_dir)
    top = [ev["image_id"] for ev in model["top_images"]][:1]
    assert list(renderings["images"]) == top
    html = (out / "report.html").read_text()
    for pair in renderings["images"].values():
        for kind in ("original", "equivalent"):
            path = (out / pair[kind]).resolve()
            assert path.is_file() and out.resolve() in path.parents and path.read_bytes()[:4] == b"\x89PNG"
    assert html.count("data:image/png;base64") >= 2
    [pair] = renderings["images"].values()
    assert (out / pair["original"]).read_bytes() != (out / pair["equivalent"]).read_bytes()
    assert model["null_dim"] == 16 - 3  # a real null space: the equivalent feature differs

    # a rerun with nothing changed renders nothing
    def no_load(self, device):
        raise AssertionError("visualizer loaded although every picture exists")

    monkeypatch.setattr(UnclipVisualizer, "load", no_load)
    assert main(["run", str(cfg)]) in (0, 1)
    again = json.loads((out / "results.json").read_text())["models"][0]["probes"]["renderings"]
    assert again["images"] == renderings["images"]


def test_karlo_transform_survives_pickling_for_spawned_workers(target):
    """DataLoader workers started by spawn (macOS, Windows) receive the transform pickled."""
    import pickle

    import torch
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    again = pickle.loads(pickle.dumps(target.transform()))
    assert torch.equal(again(image), target.transform()(image))


def test_the_family_registers_its_components_through_its_entry_points():
    from sing_audit.host import create_registry
    from sing_audit_huggingface.karlo import KarloTarget
    from sing_audit_huggingface.transformers_backbone import TransformersBackbone
    from sing_audit_huggingface.unclip import UnclipVisualizer

    registry = create_registry()
    for kind, name, factory in [("backbone", "transformers", TransformersBackbone), ("target", "karlo", KarloTarget),
                                ("visualizer", "unclip", UnclipVisualizer)]:
        entry = registry.get(kind, name)
        assert entry.factory is factory and entry.package.startswith("sing-audit-huggingface "), (kind, name)


def test_karlo_takes_class_prompt_embeddings_from_a_file(karlo_dir, tmp_path):
    """The SING authors' prompt embeddings live in Karlo's CLIP ViT-L/14 space: a file of
    them replaces the text encoder for the class prompts, resolved against the config's folder."""
    from sing_audit_huggingface.karlo import KarloTarget

    t = KarloTarget({"weights": str(karlo_dir), "class_prompt_embeddings": "prompts.npz", "base_dir": str(tmp_path)})
    assert t.class_prompts == tmp_path / "prompts.npz"
    assert KarloTarget({"weights": str(karlo_dir)}).class_prompts is None
