"""Translator families: the torch MLPs (mlp3, mlp4, residual_mlp) and sing_reference."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

import sing_audit
from sing_audit.components import PluginOptions, Translator
from sing_audit.config import ComponentSpec
from sing_audit.errors import ConfigError, DataError, WeightsError
from sing_audit.host import BuildContext, create_registry, resolve_options
from sing_audit.builtins.linear_translator import LinearTranslator
from sing_audit.builtins.mlp_translators import (
    MLP3Translator,
    MLP4Translator,
    ResidualMLPTranslator,
)
from sing_audit.builtins.sing_reference import SingReferenceTranslator

MLPS = {
    "mlp3": MLP3Translator,
    "mlp4": MLP4Translator,
    "residual_mlp": ResidualMLPTranslator,
}
FAST = {"hidden_dim": 32, "batch_size": 64, "lr": 3e-3, "threads": 1}


def r2(pred: np.ndarray, z: np.ndarray) -> float:
    return float(1.0 - np.sum((z - pred) ** 2) / np.sum((z - z.mean(axis=0)) ** 2))


@pytest.fixture(scope="module")
def nonlinear():
    """A mapping a linear map cannot follow: squares and tanh of the features."""
    rng = np.random.default_rng(0)
    n, m, k = 400, 6, 5
    x = rng.normal(size=(n, m))
    b, c = rng.normal(size=(m, k)), rng.normal(size=(m, k))
    z = np.tanh(x @ b) + 0.3 * (x**2) @ c + 0.05 * rng.normal(size=(n, k))
    return x[:300], z[:300], x[300:], z[300:]


def make(name: str, **opts) -> Translator:
    cls = MLPS[name]
    return cls(cls.Options(**{**FAST, **opts}))


# --------------------------------------------------------------------------- registry, options


def test_registered_with_documented_options():
    reg = create_registry()
    names = set(reg.names("translator"))
    assert {"linear", "mlp3", "mlp4", "residual_mlp", "sing_reference"} <= names
    for name in ("mlp3", "mlp4", "residual_mlp", "sing_reference"):
        model = reg.get("translator", name).options_model
        assert issubclass(model, PluginOptions)
        for field, info in model.model_fields.items():
            assert info.description, f"{name}.{field} has no description"


def test_options_reject_unknown_and_bad_values(tmp_path):
    with pytest.raises(ValidationError, match="epoch"):
        MLP3Translator.Options(epoch=5)  # typo of epochs
    with pytest.raises(ValidationError):
        MLP4Translator.Options(loss="l1")
    with pytest.raises(ValidationError):
        ResidualMLPTranslator.Options(validation_fraction=1.0)
    with pytest.raises(ValidationError):
        MLP3Translator.Options(device="gpu0")
    with pytest.raises(ValidationError):
        SingReferenceTranslator.Options(path="x", expect_checkpoint="resnet")
    reg = create_registry()
    with pytest.raises(ConfigError, match="hiden_dim"):
        resolve_options(BuildContext(reg, tmp_path, where="translator"), "translator", ComponentSpec(plugin="mlp3", hiden_dim=8))


# --------------------------------------------------------------------------- MLP families


@pytest.mark.parametrize("name", sorted(MLPS))
def test_mlp_fits_nonlinear_mapping_better_than_linear(name, nonlinear):
    x, z, xt, zt = nonlinear
    linear = LinearTranslator().fit(x, z)
    t = make(name, epochs=30, batch_size=100, lr=1e-2, patience=10, seed=1).fit(x, z)
    pred = t.predict(xt)
    assert pred.dtype == np.float64 and pred.shape == zt.shape
    r2_lin, r2_mlp = r2(linear.predict(xt), zt), r2(pred, zt)
    assert r2_mlp > r2_lin + 0.2, (r2_mlp, r2_lin)
    assert t.linear_map() is None
    info = t.info()
    assert 1 <= info["epochs_run"] <= 30 and info["best_val_loss"] is not None


def test_same_seed_same_translator_and_global_rng_untouched(nonlinear):
    x, z, xt, _ = nonlinear
    rng_before = torch.get_rng_state()
    a = make("mlp3", epochs=8, seed=3).fit(x, z).predict(xt)
    assert torch.equal(torch.get_rng_state(), rng_before)
    b = make("mlp3", epochs=8, seed=3).fit(x, z).predict(xt)
    c = make("mlp3", epochs=8, seed=4).fit(x, z).predict(xt)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_early_stopping_stops_when_validation_stops_improving():
    rng = np.random.default_rng(5)
    x, z = (
        rng.normal(size=(200, 6)),
        rng.normal(size=(200, 4)),
    )  # nothing to learn: validation only gets worse
    t = make("mlp4", hidden_dim=64, epochs=300, patience=4, lr=1e-2, dropout=0.0).fit(
        x, z
    )
    info = t.info()
    assert info["stopped_early"] is True
    assert info["epochs_run"] < 300
    assert info["epochs_run"] - info["best_epoch"] == 4
    # without a validation split every epoch runs
    t = make("mlp3", epochs=5, validation_fraction=0.0).fit(x, z)
    assert t.info()["epochs_run"] == 5 and t.info()["best_val_loss"] is None


@pytest.mark.parametrize("loss", ["cosine", "both"])
def test_cosine_losses_train(loss, nonlinear):
    x, z, xt, zt = nonlinear
    t = make("residual_mlp", epochs=15, loss=loss).fit(x, z)
    pred = t.predict(xt)
    cos = (
        np.sum(pred * zt, axis=1)
        / np.linalg.norm(pred, axis=1)
        / np.linalg.norm(zt, axis=1)
    )
    assert np.mean(cos) > 0.5 and t.info()["loss"] == loss


@pytest.mark.parametrize("name", sorted(MLPS))
def test_state_round_trip_through_safetensors(name, nonlinear):
    from safetensors.numpy import load, save

    x, z, xt, _ = nonlinear
    t = make(name, epochs=3, normalize_targets=True).fit(x, z)
    state = t.state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    blob = save(
        {k: np.ascontiguousarray(v) for k, v in state.items()}
    )  # what the runner writes
    fresh = MLPS[name](
        MLPS[name].Options(**{**FAST, "epochs": 3, "normalize_targets": True})
    )
    fresh.load_state(load(blob))
    np.testing.assert_array_equal(fresh.predict(xt), t.predict(xt))
    assert fresh.info() == t.info()
    assert fresh.normalized_targets
    # a state of another family is refused (the runner then refits)
    other = "mlp4" if name != "mlp4" else "mlp3"
    with pytest.raises(ValueError, match="not"):
        MLPS[other](MLPS[other].Options(**FAST)).load_state(load(blob))


@pytest.mark.parametrize("name", [*sorted(MLPS), "sing_reference"])
def test_predict_before_fit_raises(name, tmp_path):
    if name == "sing_reference":
        folder = write_reference(tmp_path, "linear", *linear_checkpoint())
        t = SingReferenceTranslator(SingReferenceTranslator.Options(path=folder))
    else:
        t = make(name)
    with pytest.raises(RuntimeError, match="not fitted"):
        t.predict(np.zeros((2, IN_DIM)))


def test_torch_forward_matches_predict_and_differentiates(nonlinear):
    x, z, xt, _ = nonlinear
    t = make("mlp3", epochs=2).fit(x, z)
    f = torch.as_tensor(xt[:5], dtype=torch.float64).requires_grad_(True)
    # predict runs torch_forward itself (the same cached float64 module on the same rows),
    # under no_grad, on the translator's `threads` (1 here). On that thread count the two are
    # one computation, so bit-equal: autograd does not change the kernels. On another thread
    # count MKL may split the layers' sums differently (4e-16 apart on 2 threads), which is
    # rounding, not a different T: so the comparison runs on the translator's thread count.
    before = torch.get_num_threads()
    torch.set_num_threads(t.options.threads)
    try:
        u = t.torch_forward(f)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(u.detach().numpy(), t.predict(xt[:5]))
    (g,) = torch.autograd.grad(u[:, 0].sum(), f)
    assert g.shape == f.shape and torch.all(torch.isfinite(g))


def test_audit_runs_with_mlp3(synthetic_config):
    """The runner keeps the verdict on a linear translator; mlp3 runs on the same folds as a comparison."""
    result = sing_audit.run(
        synthetic_config(compare_translators=[{"plugin": "mlp3", "epochs": 20}])
    )
    assert result.models
    for model in result.models:
        assert model.fidelity.cosine is not None and np.isfinite(model.fidelity.cosine)
        (cmp,) = model.translator_comparison
        assert cmp.translator == "mlp3" and cmp.linear is False
        for figure in (cmp.cosine, cmp.r2, cmp.mse):
            assert figure is not None and np.isfinite(figure)
        assert cmp.null_energy is None  # not a linear map
        assert all(1 <= e <= 20 for e in cmp.params["epochs_run"])


# --------------------------------------------------------------------------- sing_reference fixtures

IN_DIM, OUT_DIM, HIDDEN = 12, 6, 16


def write_reference(
    root: Path,
    architecture: str,
    state: dict,
    model_name: str = "dinovit1",
    name: str | None = None,
    **meta_changes,
) -> Path:
    """A translator folder exactly as the authors' repository lays it out."""
    name = name or architecture
    folder = root / "translators" / model_name / name
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "model_name": model_name,
        "translator_name": name,
        "architecture": architecture,
        "embedding_backend": "kakao_karlo_v1_alpha_image_variations",
        "in_dim": IN_DIM,
        "out_dim": OUT_DIM,
        "hidden_dim": HIDDEN,
        "checkpoint_file": "best.pt",
    }
    meta.update(meta_changes)
    (folder / "metadata.yaml").write_text(
        yaml.safe_dump(meta, sort_keys=False), encoding="utf-8"
    )
    torch.save(state, folder / "best.pt")
    return folder


def linear_checkpoint(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(OUT_DIM, IN_DIM, generator=g)
    b = torch.randn(OUT_DIM, generator=g)
    # the authors' LinearTranslator is an nn.Module with parameters 'weight' and 'bias'
    return (collections.OrderedDict(weight=w, bias=b),)


class AuthorsThreeLayer(torch.nn.Module):
    """The layout of the authors' 3layer translator, written out independently."""

    def __init__(self) -> None:
        super().__init__()
        h = HIDDEN
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(IN_DIM, h),
            torch.nn.LayerNorm(h),
            torch.nn.GELU(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(h, h),
            torch.nn.LayerNorm(h),
            torch.nn.GELU(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(h, OUT_DIM),
        )

    def forward(self, x):
        return self.layers(x)


class AuthorsResidual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        h = HIDDEN
        self.input_proj = torch.nn.Linear(IN_DIM, h)
        self.residual = torch.nn.Sequential(
            torch.nn.LayerNorm(h),
            torch.nn.GELU(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(h, h),
        )
        self.output_proj = torch.nn.Sequential(
            torch.nn.LayerNorm(h),
            torch.nn.GELU(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(h, OUT_DIM),
        )

    def forward(self, x):
        h = self.input_proj(x)
        return self.output_proj(h + self.residual(h))


def randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module.eval()


def reference(folder: Path, **opts) -> SingReferenceTranslator:
    return SingReferenceTranslator(SingReferenceTranslator.Options(path=folder, **opts))


def data(n: int = 20, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, IN_DIM)), rng.normal(size=(n, OUT_DIM))


# --------------------------------------------------------------------------- sing_reference


def test_reference_linear_loads_and_predicts(tmp_path):
    (sd,) = linear_checkpoint()
    folder = write_reference(tmp_path, "linear", sd)
    f, z = data()
    t = reference(folder)
    assert t.fit(f, z) is t
    w, b = sd["weight"].double().numpy(), sd["bias"].double().numpy()
    np.testing.assert_allclose(t.predict(f), f @ w.T + b, rtol=1e-12, atol=1e-12)
    a, c = t.linear_map()
    np.testing.assert_array_equal(a, w)
    np.testing.assert_array_equal(c, b)
    info = t.info()
    assert info["model_name"] == "dinovit1" and info["architecture"] == "linear"
    assert info["embedding_backend"] == "kakao_karlo_v1_alpha_image_variations"
    assert (
        info["backbone_checkpoint"] == "timm:vit_large_patch16_224.augreg_in21k_ft_in1k"
    )
    assert (
        info["checkpoint_sha256"].startswith("sha256:")
        and -1 <= info["fit_cosine"] <= 1
    )


@pytest.mark.parametrize(
    "architecture, module, nesting",
    [
        ("3layer", AuthorsThreeLayer, None),
        ("3layer", AuthorsThreeLayer, "model_state_dict"),
        ("residual", AuthorsResidual, "translator_state_dict"),
    ],
)
def test_reference_mlp_matches_direct_computation(
    tmp_path, architecture, module, nesting
):
    net = randomised(module(), seed=7)
    sd = net.state_dict()
    folder = write_reference(
        tmp_path,
        architecture,
        {nesting: sd, "epoch": torch.tensor(12)} if nesting else sd,
    )
    f, z = data()
    t = reference(folder).fit(f, z)
    with torch.no_grad():
        direct = net.double()(torch.as_tensor(f)).numpy()
    np.testing.assert_allclose(t.predict(f), direct, rtol=1e-10, atol=1e-10)
    assert t.linear_map() is None
    x = torch.as_tensor(f, dtype=torch.float64).requires_grad_(True)
    (g,) = torch.autograd.grad(t.torch_forward(x).sum(), x)
    assert g.shape == x.shape


def test_reference_dimension_mismatch_is_a_data_error(tmp_path):
    folder = write_reference(tmp_path, "linear", *linear_checkpoint())
    f, z = data()
    # the widths, not one fold's shape: the backbone's feature dimension and the fix
    with pytest.raises(DataError, match=r"features are 11-dimensional, not in_dim 12;.*fitted on the features of") as err:
        reference(folder).fit(f[:, :11], z)
    assert "(20, 11)" not in str(err.value)
    with pytest.raises(DataError, match=r"embeddings are 5-dimensional, not out_dim 6"):
        reference(folder).fit(f, z[:, :5])
    with pytest.raises(DataError, match=r"in_dim 12.*features are 11-dimensional"):
        reference(folder).fit(f, z).predict(f[:, :11])


def test_reference_checks_backbone_and_target(tmp_path):
    folder = write_reference(tmp_path, "linear", *linear_checkpoint())
    # the same checkpoint under the names a user may write
    for name in (
        "dinovit1",
        "timm/vit_large_patch16_224.augreg_in21k_ft_in1k",
        "vit_large_patch16_224",
    ):
        reference(folder, expect_backbone=name)
    for name in (
        "openai/clip-vit-large-patch14",
        "ViT-L-14/openai",
        "kakao_karlo_v1_alpha_image_variations",
    ):
        reference(folder, expect_target=name)
    with pytest.raises(
        WeightsError, match="tied to the backbone checkpoint.*not on a DINO checkpoint"
    ):
        reference(folder, expect_backbone="vit_large_patch16_224.dino")
    with pytest.raises(WeightsError, match="tied to the backbone checkpoint"):
        reference(folder, expect_backbone="timm/vit_large_patch16_224.orig_in21k")
    with pytest.raises(WeightsError, match="ViT-B-32.*tied to"):
        reference(folder, expect_target="ViT-B-32/openai")


@pytest.mark.parametrize(
    "model_name, accepted, refused, says",
    [
        ("densenet", ["densenet121", "torchvision:densenet121", "timm/densenet121.tv_in1k"], "timm/densenet121",
         "ra_in1k"),
        ("convnext", ["convnext_base", "hf-hub:timm/convnext_base.fb_in22k_ft_in1k"], "convnext_base.fb_in1k",
         "timm/convnext_base.fb_in22k_ft_in1k"),
        ("efficientnet", ["tf_efficientnet_b0", "timm/tf_efficientnet_b0.ns_jft_in1k"], "tf_efficientnet_b0.in1k",
         "ns_jft_in1k"),
        ("resnet", ["resnet50.IMAGENET1K_V1", "resnet50.tv_in1k"], "resnet50", "IMAGENET1K_V2"),
    ],
)
def test_reference_backbone_names_that_resolve_to_the_published_weights(tmp_path, model_name, accepted, refused, says):
    folder = write_reference(tmp_path, "linear", *linear_checkpoint(), model_name=model_name)
    for name in accepted:
        reference(folder, expect_backbone=name)
    with pytest.raises(WeightsError, match=f"expects backbone {refused!r}: .*{says}.*tied to the backbone") as err:
        reference(folder, expect_backbone=refused)
    assert "write expect_backbone:" in str(err.value)


def test_reference_refuses_poor_fidelity(tmp_path):
    (sd,) = linear_checkpoint()
    folder = write_reference(tmp_path, "linear", sd)
    f, _ = data()
    z = -(
        f @ sd["weight"].double().numpy().T + sd["bias"].double().numpy()
    )  # opposite direction
    with pytest.raises(DataError, match="min_cosine"):
        reference(folder, min_cosine=0.5).fit(f, z)
    assert reference(folder, min_cosine=0.5).fit(f, -z).info()["fit_cosine"] > 0.99


def test_reference_state_round_trip_checks_the_file(tmp_path):
    from safetensors.numpy import load, save

    folder = write_reference(tmp_path, "linear", *linear_checkpoint())
    f, z = data()
    t = reference(folder).fit(f, z)
    blob = save(t.state())
    again = reference(folder).load_state(load(blob))
    np.testing.assert_array_equal(again.predict(f), t.predict(f))
    write_reference(tmp_path, "linear", *linear_checkpoint(seed=9))  # best.pt replaced
    with pytest.raises(ValueError, match="another version"):
        reference(folder).load_state(load(blob))


class _Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_reference_refuses_unsafe_pickle(tmp_path):
    marker = tmp_path / "code_ran"
    (sd,) = linear_checkpoint()
    folder = write_reference(tmp_path, "linear", {**sd, "trainer": _Exploit(marker)})
    with pytest.raises(WeightsError, match="arbitrary code"):
        reference(folder)
    assert not marker.exists()


def test_reference_malformed_folders(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        reference(tmp_path / "nowhere")
    (sd,) = linear_checkpoint()
    folder = write_reference(tmp_path, "linear", sd, in_dim=13)
    with pytest.raises(WeightsError, match="do not match metadata"):
        reference(folder)
    folder = write_reference(tmp_path, "3layer", sd, name="mlp")
    with pytest.raises(WeightsError, match="missing key"):
        reference(folder)
    folder = write_reference(tmp_path, "transformer", sd, name="odd")
    with pytest.raises(WeightsError, match="architecture"):
        reference(folder)
    folder = write_reference(
        tmp_path, "linear", sd, name="escape", checkpoint_file="../../secret.pt"
    )
    with pytest.raises(WeightsError, match="inside the translator folder"):
        reference(folder)


def test_audit_runs_with_a_published_style_translator(
    tmp_path, synthetic_config, scenario, scenario_dir
):
    """A linear translator saved in the authors' format, found relative to the config's folder."""
    from sing_audit.ridge import fit_ridge

    feats, emb = scenario.features["benign"], scenario.embeddings
    sol = fit_ridge(feats, emb, alpha=1e-3)
    sd = collections.OrderedDict(
        weight=torch.as_tensor(sol.coef, dtype=torch.float32),
        bias=torch.as_tensor(sol.intercept, dtype=torch.float32),
    )
    write_reference(
        tmp_path,
        "linear",
        sd,
        model_name="synthetic",
        in_dim=feats.shape[1],
        out_dim=emb.shape[1],
    )
    result = sing_audit.run(
        synthetic_config(
            backbones=[
                {
                    "name": "benign",
                    "plugin": "precomputed",
                    "path": str(scenario_dir / "benign.npz"),
                }
            ],
            translator={
                "plugin": "sing_reference",
                "path": "translators/synthetic/linear",
                "min_cosine": 0.5,
            },
        )
    )
    (model,) = result.models
    assert model.fidelity.translator == "sing_reference"
    assert model.fidelity.cosine > 0.5
    assert (
        model.fidelity.null_energy is not None
    )  # a linear map: its null-space share is reported
