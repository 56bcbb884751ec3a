"""Input-space probes on random-init tiny timm ViTs, with known answers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from sing_audit import input_space as S  # noqa: E402
from sing_audit.errors import ConfigError  # noqa: E402
from sing_audit.builtins import input_probes as P  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _vit(name="vit_tiny_patch16_224", img_size=32, depth=1, num_classes=10, seed=0):
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, img_size=img_size, depth=depth, num_classes=num_classes).eval()


def _images(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    pix = torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)
    return torch.as_tensor(S.from_pixels(pix.numpy(), MEAN, STD)).float()


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """Small SVDs and tiny models: one thread avoids oversubscription on busy CI machines."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpoolctl.threadpool_limits(1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    return _vit()


# --------------------------------------------------------------------------- 1. patch-embedding null space


@pytest.mark.parametrize(
    "dim,p,full,per_channel",
    [(192, 16, 576, 64), (384, 16, 384, 0), (768, 16, 0, 0), (384, 32, 2688, 640), (768, 32, 2304, 256)],
    ids=["ViT-Ti/16", "ViT-S/16", "ViT-B/16", "ViT-S/32", "ViT-B/32"],
)
def test_patch_null_dimension_per_architecture(dim, p, full, per_channel):
    """The dimension is shape-dependent: 3p² − D for the full matrix, max(p² − D, 0) per channel."""
    from timm.layers import PatchEmbed

    torch.manual_seed(0)
    pe = PatchEmbed(img_size=p, patch_size=p, in_chans=3, embed_dim=dim)
    space = S.patch_null_space(pe.proj.weight.detach().numpy(), full_basis=p == 16, channel_bases=False)
    assert space.null_dim == full and space.rank == min(dim, 3 * p * p)
    assert space.channel_null_dims == [per_channel] * 3
    w = pe.proj.weight.detach().double().numpy().reshape(dim, -1)
    assert space.rank == np.linalg.matrix_rank(w)
    if space.basis is not None and full:
        assert space.basis.shape == (3 * p * p, full)
        assert np.abs(w @ space.basis).max() < 1e-10 * np.abs(w).max()


def test_patch_null_dimension_of_a_real_timm_model(tiny):
    w, p = S.patch_embedding(tiny)
    assert p == 16 and S.patch_null_space(w).null_dim == 576


def test_patch_round_trip():
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 64))
    assert np.array_equal(S.patches_to_image(S.image_to_patches(x, 16), 16, 3, 32, 64), x)
    # patch vectors are channel-major, as W.reshape(D, -1) reads them
    assert np.array_equal(S.image_to_patches(x, 16)[0, 1], x[0, :, :16, 16:32].ravel())


def test_bounded_perturbation_stays_in_box_and_in_null_space():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 3, 4, 4))
    space = S.patch_null_space(w)
    lo, hi = S.valid_range(MEAN, STD)
    x = S.from_pixels(rng.uniform(size=(2, 3, 8, 8)), MEAN, STD)
    coefs = rng.normal(scale=3.0, size=(2, 4, space.null_dim))
    d = S.bounded_null_perturbation(x, space.basis, 4, lo, hi, coefs)
    pix = S.to_pixels(x + d, MEAN, STD)
    assert pix.min() >= -1e-12 and pix.max() <= 1 + 1e-12
    assert np.abs(d).max() > 0.1  # not a trivial zero
    dp = S.image_to_patches(d, 4)
    assert np.abs(dp @ w.reshape(8, -1).T).max() < 1e-10


def test_equivalent_image_keeps_logits_and_permuted_noise_does_not(tiny):
    res, summary = P.PatchEmbedNullProbe().run_on(tiny, _images(3), MEAN, STD)
    assert res.null_drift.max() < 1e-5 and res.null_agreement.all()
    assert res.control_drift.min() > 1e3 * res.null_drift.max()
    # the same noise: same norm per image
    assert np.allclose(np.linalg.norm(res.delta.reshape(3, -1), axis=1), res.pixel_l2 * 0 + np.linalg.norm(res.delta.reshape(3, -1), axis=1))
    assert summary.exact and summary.null_dim == 576 and summary.pixel_l2.mean > 0.5
    assert res.equivalent_uint8.dtype == np.uint8 and res.equivalent_uint8.shape == (3, 32, 32, 3)
    assert summary.examples[0].equivalent_png.startswith("data:image/png;base64,")
    # 8-bit rendering breaks exactness, and it is reported
    assert summary.quantised_drift.max > summary.null_drift.max


def test_channel_mode_touches_one_channel_only():
    model = _vit("vit_small_patch32_224", img_size=32, seed=1)
    res = S.run_patch_null(model, _images(2), MEAN, STD, mode="channel", channel=2)
    assert res.space.channel_null_dims == [640, 640, 640] and res.space.null_dim == 2688
    assert np.abs(res.delta[:, :2]).max() == 0 and np.abs(res.delta[:, 2]).max() > 0.1
    assert res.null_drift.max() < 1e-5 and res.control_drift.min() > 1e-3


def test_vit_b16_has_no_exact_null_space_and_says_so():
    from timm.layers import PatchEmbed

    pe = PatchEmbed(img_size=16, patch_size=16, embed_dim=768)
    space = S.patch_null_space(pe.proj.weight.detach().numpy())
    assert space.null_dim == 0 and space.basis.shape == (768, 0)
    # the probe still runs: a zero perturbation, reported as such
    d = S.bounded_null_perturbation(np.zeros((1, 3, 16, 16)), space.basis, 16, *S.valid_range(MEAN, STD), np.zeros((1, 1, 0)))
    assert not d.any()


# --------------------------------------------------------------------------- 2. Jacobian spectrum, Lipschitz


@pytest.fixture(scope="module")
def jacobian(tiny):
    probe = P.JacobianProbe(P.JacobianProbe.Options(eps=[1e-4, 1e-2], n_random=2, max_images=1))
    return probe.run_on(tiny, _images(1))


def test_jacobian_rank_bound_after_final_layernorm(jacobian, tiny):
    res, summary = jacobian
    sp = res.spectra[0]
    assert sp.exact and sp.output_dim == 192 and sp.input_dim == 3 * 32 * 32
    # the final LayerNorm removes the mean: rank ≤ D − 1; 1/γ is a left null vector
    assert summary.numerical_rank == [191]
    assert sp.singular_values[-1] < 1e-10 * sp.singular_values[0]
    # patch-embedding null directions are in the right null space of J
    w, p = S.patch_embedding(tiny)
    basis = S.patch_null_space(w).basis
    v = np.zeros((1, 4, 768))
    v[0, 0] = basis[:, 0]
    v_img = S.patches_to_image(v, p, 3, 32, 32).ravel()
    assert np.linalg.norm(sp.right.T @ v_img * sp.singular_values) < 1e-8 * sp.singular_values[0]


def test_exact_jacobian_matches_finite_differences(tiny):
    import copy

    m = copy.deepcopy(tiny).double()
    x = _images(1)[0].double()
    fn = S.feature_fn(m)
    with S.math_attention(m):
        j = S.jacobian_matrix(fn, x)
    d = np.random.default_rng(1).normal(size=x.numel())
    h = 1e-6
    with torch.no_grad():
        xp = x + h * torch.as_tensor(d).reshape(x.shape)
        xm = x - h * torch.as_tensor(d).reshape(x.shape)
        fd = ((fn(xp[None]) - fn(xm[None])) / (2 * h)).numpy().ravel()
    assert np.allclose(j @ d, fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())


def test_randomized_svd_approximates_the_top_singular_values(tiny):
    import copy

    m = copy.deepcopy(tiny).double()
    x = _images(1)[0].double()
    with S.math_attention(m):
        exact = S.jacobian_spectrum(S.feature_fn(m), x, method="exact")
        approx = S.jacobian_spectrum(S.feature_fn(m), x, method="randomized", k=5)
    assert not approx.exact and approx.singular_values.shape == (5,)
    assert np.allclose(approx.singular_values, exact.singular_values[:5], rtol=0.05)
    assert np.all(approx.singular_values <= exact.singular_values[:5] * (1 + 1e-9))


def test_directional_lipschitz_top_random_null(jacobian):
    res, summary = jacobian
    s_max = res.spectra[0].singular_values[0]
    # at small ε the top direction's constant is σ_max, and a null direction's is ~0
    assert summary.lipschitz_top[0] == pytest.approx(s_max, rel=1e-3)
    assert summary.lipschitz_null[0] < 1e-3 * s_max
    assert summary.lipschitz_top[0] > 2 * summary.lipschitz_random[0]
    assert summary.top_over_random > 2


# --------------------------------------------------------------------------- 3. encoder null space


def test_encoder_noise_is_larger_than_random_at_equal_harm(tiny):
    probe = P.EncoderNullProbe(P.EncoderNullProbe.Options(steps=8, max_rounds=6, tolerance=0.05, growth=2.0))
    res, summary = probe.run_on(tiny, _images(6))
    assert summary.norm >= 1.0 and summary.fit_drift <= 0.05
    assert res.noise.shape == (4, 192) and np.linalg.norm(res.noise) == pytest.approx(summary.norm, rel=1e-6)
    assert summary.control_drift > summary.fit_drift  # a random noise of the same norm does more harm
    assert summary.n_fit == 3 and summary.n_heldout == 3 and summary.heldout_drift is not None
    assert summary.rounds and summary.rounds[0]["norm"] == 1.0


# --------------------------------------------------------------------------- 4. embedding matching


def test_embedding_matching_moves_toward_target_within_range(tiny):
    probe = P.EmbeddingMatchProbe(P.EmbeddingMatchProbe.Options(steps=60, lr=0.02, distance_tol=0.2, cosine_tol=0.97))
    x = _images(2, seed=3)
    res, summary = probe.run_on(tiny, x[:1], x[1:], MEAN, STD)
    assert res.distance_after[0] < 0.5 * res.distance_before[0]
    pix = S.to_pixels(res.matched, MEAN, STD)
    assert pix.min() >= -1e-6 and pix.max() <= 1 + 1e-6
    assert summary.pixel_l2.mean > 0 and summary.n_pairs == 1
    assert summary.pairs[0]["pred_matched"] == int(res.pred_matched[0])


def test_pair_targets_prefer_another_class():
    assert P.EmbeddingMatchProbe.pair_targets(np.array([0, 0, 1, 1])).tolist() == [2, 2, 0, 0]


# --------------------------------------------------------------------------- plugins


class _Ctx:
    """A stand-in for ProbeContext with the proposed ``backbone`` and ``images`` fields."""

    def __init__(self, model, images, backbone=True):
        self.features = np.zeros((images.shape[0], 192))
        self.labels = np.arange(images.shape[0]) % 2
        self.image_ids = [f"img{i}" for i in range(images.shape[0])]
        self.images = (lambda rows: images[torch.as_tensor(rows)]) if images is not None else None
        self.backbone = type("B", (), {"model": model, "data_config": lambda self: {"mean": MEAN, "std": STD}})() if backbone else None


def test_probes_are_registered():
    from sing_audit.host import create_registry

    names = create_registry().names("probe")
    assert {"patch_embed_null", "jacobian", "encoder_null", "embedding_match"} <= set(names)


@pytest.mark.parametrize("name", ["patch_embed_null", "jacobian", "encoder_null", "embedding_match"])
def test_probe_without_backbone_or_images_is_a_config_error(name, tiny):
    from sing_audit.host import create_registry

    probe = create_registry().get("probe", name).factory()
    with pytest.raises(ConfigError, match="ProbeContext.backbone"):
        probe.run(_Ctx(tiny, _images(2), backbone=False))


def test_patch_null_probe_through_context(tiny):
    out = P.PatchEmbedNullProbe(P.PatchEmbedNullProbe.Options(max_images=2, examples=1)).run(_Ctx(tiny, _images(4)))
    col = out.per_image["null_drift"]
    assert col.shape == (4,) and np.isnan(col).sum() == 2 and np.nanmax(col) < 1e-5
    assert out.summary["exact"] is True and out.summary["examples"][0]["image_id"] == "img0"
    import json

    json.dumps(out.summary)


def test_options_reject_unknown_keys():
    with pytest.raises(Exception):
        P.JacobianProbe.Options(bogus=1)


def test_input_probes_run_from_a_config(tmp_path):
    """The runner hands the loaded ViT and its images to probes that need them."""
    from sing_audit.cli import main

    from .conftest import image_folder_audit

    cfg = image_folder_audit(
        tmp_path,
        [{"name": "vit", "plugin": "timm", "model": "vit_tiny_patch16_224", "weights": "random", "img_size": 32}],
        per_class=2,
        probes=["null_removal", {"plugin": "patch_embed_null", "max_images": 2, "examples": 1}],
    )
    assert main(["run", str(cfg)]) == 0
    import json

    summary = json.loads((tmp_path / "out" / "results.json").read_text())["models"][0]["probes"]["patch_embed_null"]
    assert summary["null_dim"] == 576 and summary["n_images"] == 2
    assert summary["null_drift"]["max"] < 1e-5 < summary["control_drift"]["mean"]


# --------------------------------------------------------------------------- 5. semantics of equivalent images


def test_equivalent_image_scores_known_answers():
    z = np.array([[1.0, 0.0], [3.0, 4.0]])
    text = np.array([[1.0, 1.0], [0.0, 1.0]]) / np.array([[np.sqrt(2)], [1.0]])
    # identical embeddings: exactly zero, whatever the prompt
    is_, as_ = S.equivalent_image_scores(z, z.copy(), text, np.array([0, 1]))
    assert np.array_equal(is_, np.zeros(2)) and np.array_equal(as_, np.zeros(2))
    # (1,0) -> (0,1): 90° apart; toward (1,1) both are 45° away (AS 0), toward (0,1) AS = 90 − 0
    is_, as_ = S.equivalent_image_scores(np.array([[1.0, 0.0]] * 2), np.array([[0.0, 2.0]] * 2), text, np.array([0, 1]))
    assert is_ == pytest.approx([90.0, 90.0], abs=1e-12) and as_ == pytest.approx([0.0, 90.0], abs=1e-12)
    # tiny angles stay resolved in float64 (arccos would return 0 here)
    e = 1e-9
    is_, _ = S.equivalent_image_scores(np.array([[1.0, 0.0]]), np.array([[1.0, e]]), text, np.array([0]))
    assert is_[0] == pytest.approx(np.degrees(e), rel=1e-6)
    with pytest.raises(ValueError):
        S.equivalent_image_scores(z, z[:1], text, np.array([0, 1]))


class _PixelTarget:
    """An ImageTarget whose image encoder is a fixed linear map of the float pixels."""

    @staticmethod
    def make(dim=5, size=32, seed=0, encode=True):
        from sing_audit.components import ImageTarget

        proj = torch.as_tensor(np.random.default_rng(seed).normal(size=(3 * size * size, dim)))

        class T(ImageTarget):
            seen: list = []

            def describe(self):
                return {"plugin": "pixel-linear"}

            def load(self, device):
                pass

            def transform(self):
                return None

            def encode_images(self, images):
                raise AssertionError("encode_pixels must be used")

            if encode:
                def encode_pixels(self, pixels):
                    self.seen.append(pixels.clone())
                    return pixels.reshape(pixels.shape[0], -1).double() @ proj

        return T(), proj


def _sem_ctx(model, images, target, dim=5, classes=2):
    ctx = _Ctx(model, images)
    ctx.target = target
    ctx.target_name = "pix"
    text = np.random.default_rng(1).normal(size=(classes, dim))
    ctx.class_text = text / np.linalg.norm(text, axis=1, keepdims=True)
    return ctx


def test_semantics_of_patch_null_equivalents_match_a_hand_computation(tiny):
    target, proj = _PixelTarget.make()
    x = _images(4)
    ctx = _sem_ctx(tiny, x, target)
    probe = P.PatchEmbedNullProbe(P.PatchEmbedNullProbe.Options(max_images=3, examples=1))
    assert probe.needs_target is True
    out = probe.run(ctx)
    sem = out.summary["target_semantics"]
    assert sem["scored"] is True and sem["target"] == "pix" and sem["n_images"] == 3
    # pixels handed to the target: float, unclamped x·std + mean of the backbone's input
    rows = np.array([0, 2, 3])
    orig_pix = S.to_pixels(x[rows].double().numpy(), MEAN, STD)
    assert torch.equal(target.seen[0], torch.as_tensor(orig_pix))
    assert target.seen[1].dtype == torch.float64 and not torch.equal(target.seen[0], target.seen[1])
    # equivalent pixels differ from the original only by the null perturbation (no 8-bit rounding)
    diff = target.seen[1].numpy() - orig_pix
    assert np.abs(diff * 255 - np.round(diff * 255)).max() > 1e-3
    z0, z1 = orig_pix.reshape(3, -1) @ proj.numpy(), target.seen[1].numpy().reshape(3, -1) @ proj.numpy()
    t = ctx.class_text[ctx.labels[rows]]
    want_is = S.angles(z0, z1)
    want_as = S.angles(z0, t) - S.angles(z1, t)
    got = sem["images"]
    assert [g["image_id"] for g in got] == ["img0", "img2", "img3"]
    assert [g["image_score"] for g in got] == pytest.approx(want_is, abs=1e-9)
    assert [g["attribute_score"] for g in got] == pytest.approx(want_as, abs=1e-9)
    assert sem["is_mean"] == pytest.approx(want_is.mean()) and sem["as_abs_mean"] == pytest.approx(np.abs(want_as).mean())
    assert sem["is_mean"] > 0
    assert np.isnan(out.per_image["target_is"][1]) and out.per_image["target_is"][rows] == pytest.approx(want_is)
    assert out.summary["quantised_exact"] <= 1.0


def test_no_null_space_gives_exactly_zero_is_and_as():
    """ViT-B/16 has no patch-embedding null space: the equivalent image is the original."""
    model = _vit("vit_base_patch16_224", img_size=16, depth=1)
    target, _ = _PixelTarget.make(size=16)
    x = _images(2, size=16)
    out = P.PatchEmbedNullProbe(P.PatchEmbedNullProbe.Options(examples=0)).run(_sem_ctx(model, x, target))
    sem = out.summary["target_semantics"]
    assert out.summary["null_dim"] == 0 and sem["scored"]
    assert [g["image_score"] for g in sem["images"]] == [0.0, 0.0]
    assert [g["attribute_score"] for g in sem["images"]] == [0.0, 0.0]


def test_semantics_are_skipped_with_a_reason_never_failing(tiny):
    from sing_audit.components import EmbeddingTarget

    class Pre(EmbeddingTarget):
        def describe(self):
            return {}

        def load_embeddings(self):
            raise AssertionError

    probe = P.PatchEmbedNullProbe(P.PatchEmbedNullProbe.Options(max_images=1, examples=0))
    x = _images(2)
    sem = probe.run(_sem_ctx(tiny, x, Pre())).summary["target_semantics"]
    assert sem["scored"] is False and "no image encoder" in sem["reason"]
    no_pixels, _ = _PixelTarget.make(encode=False)
    sem = probe.run(_sem_ctx(tiny, x, no_pixels)).summary["target_semantics"]
    assert sem["scored"] is False and "encode_pixels" in sem["reason"] and "T" in sem["reason"]
    sem = probe.run(_Ctx(tiny, x)).summary["target_semantics"]
    assert sem["scored"] is False and sem["reason"]
    # switched off: no target needed, nothing recorded
    off = P.PatchEmbedNullProbe(P.PatchEmbedNullProbe.Options(max_images=1, examples=0, target_semantics=False))
    assert off.needs_target is False and off.run(_Ctx(tiny, x)).summary["target_semantics"] is None
    assert P.EncoderNullProbe().needs_target is False and P.JacobianProbe().needs_target is False


def test_semantics_of_matched_images(tiny):
    target, proj = _PixelTarget.make()
    x = _images(2, seed=3)
    ctx = _sem_ctx(tiny, x, target)
    probe = P.EmbeddingMatchProbe(P.EmbeddingMatchProbe.Options(steps=5, lr=0.02, max_pairs=2))
    assert probe.needs_target
    out = probe.run(ctx)
    sem = out.summary["target_semantics"]
    assert sem["scored"] and sem["n_images"] == 2 and sem["is_mean"] > 0
    # AS toward the other image's class prompt: labels are 0, 1 and images are paired across
    z0 = target.seen[0].numpy().reshape(2, -1) @ proj.numpy()
    z1 = target.seen[1].numpy().reshape(2, -1) @ proj.numpy()
    t_other = ctx.class_text[[1, 0]]
    want = S.angles(z0, t_other) - S.angles(z1, t_other)
    assert [g["attribute_score_other"] for g in sem["images"]] == pytest.approx(want, abs=1e-9)
    assert sem["as_other_mean"] == pytest.approx(want.mean())


def test_default_encode_pixels_is_a_clear_error():
    from sing_audit.errors import DataError

    t, _ = _PixelTarget.make(encode=False)
    with pytest.raises(DataError, match="T cannot embed float pixel tensors"):
        t.encode_pixels(torch.zeros(1, 3, 8, 8))


@pytest.fixture(scope="module")
def tiny_clip_target(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    import json

    from .test_image_audit import TINY_CLIP

    path = tmp_path_factory.mktemp("clipcfg") / "sing-tiny-clip-px.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(path)
    from sing_audit_open_clip.target import OpenClipTarget

    t = OpenClipTarget({"model": "sing-tiny-clip-px", "weights": "random"})
    t.load("cpu")
    return t


def test_open_clip_encode_pixels_is_its_own_preprocessing_on_floats(tiny_clip_target):
    from PIL import Image

    t = tiny_clip_target
    rng = np.random.default_rng(0)
    # at the model's size nothing is resampled: exactly transform() of the 8-bit image
    arr = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    pix = torch.as_tensor(arr).permute(2, 0, 1)[None].double() / 255.0
    ref = t.transform()(Image.fromarray(arr)).double()
    assert torch.allclose(t.preprocess_pixels(pix)[0], ref, atol=1e-6)
    z_ref = t.encode_images(ref[None].float())
    z = t.encode_pixels(pix)
    assert z.shape == z_ref.shape == (1, 64) and torch.allclose(z, z_ref, atol=1e-5)
    # other sizes: resized and centre-cropped like the PIL pipeline (antialiased bicubic)
    for h, w in ((96, 80), (50, 70)):
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        pix = torch.as_tensor(arr).permute(2, 0, 1)[None].double() / 255.0
        got = t.preprocess_pixels(pix)[0]
        ref = t.transform()(Image.fromarray(arr)).double()
        assert got.shape == ref.shape == (3, 64, 64)
        assert (got - ref).abs().mean() < 0.02
    # float perturbations far below one 8-bit step are not rounded away
    tiny_step = pix + 1e-4
    assert (t.preprocess_pixels(tiny_step) - t.preprocess_pixels(pix)).abs().max() > 1e-5
    with pytest.raises(ValueError, match="B×3×H×W"):
        t.preprocess_pixels(torch.zeros(3, 8, 8))
