"""The ``input_space`` report section, and the input-space probes end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sing_audit.host import create_registry
from sing_audit.builtins import input_probes as P
from sing_audit.builtins.input_sections import InputSpaceSection
from sing_audit.report import collect_sections, render_html, render_report

from .test_report import XSS, assert_self_contained, elements, small_result

PNG = P.png_base64(np.full((4, 4, 3), 200, dtype=np.uint8))


@pytest.fixture(autouse=True)
def _builtins_only(monkeypatch):
    monkeypatch.setenv("SING_AUDIT_LOAD_PLUGINS", "")


def _stat(mean, mx):
    return {"mean": mean, "max": mx}


def _semantics(image_id="img0", target="clip", scored=True):
    if not scored:
        return P.TargetSemantics(target=target, scored=False, reason=f"no encoder {XSS}").model_dump(mode="json")
    return P.TargetSemantics(
        target=target, scored=True, n_images=1, is_mean=3.25, is_max=3.25, as_mean=-1.5, as_abs_mean=1.5,
        images=[P.EquivalentImageScore(image_id=image_id, label=0, image_score=3.25, attribute_score=-1.5)],
    ).model_dump(mode="json")


def probe_summaries(image_id="img0", target="clip", png=PNG, scored=True) -> dict:
    """Summaries shaped by the probes' own pydantic models (so the section reads what they write)."""
    patch = P.PatchEmbedNullSummary(
        patch_size=16, embed_dim=192, patch_dim=768, rank=192, null_dim=576, channel_null_dims=[64, 64, 64],
        mode="full", n_images=2, pixel_l2=P.Stat(mean=1.5, max=2.0), pixel_linf=P.Stat(mean=0.2, max=0.3),
        null_drift=P.Stat(mean=1e-7, max=2e-7), null_agreement=1.0, control_drift=P.Stat(mean=0.4, max=0.6),
        control_agreement=0.5, quantised_drift=P.Stat(mean=3e-3, max=4e-3), quantised_agreement=1.0,
        original_quantised_drift=P.Stat(mean=1e-3, max=2e-3), quantised_exact=0.0, exact=True, tolerance=1e-5,
        examples=[P.EquivalentImage(image_id=image_id, original_png=png, equivalent_png=png, difference_png=png)],
        target_semantics=P.TargetSemantics.model_validate(_semantics(image_id, target, scored)),
    ).model_dump(mode="json")
    encoder = P.EncoderNullSummary(
        norm=7.59, relative_norm=0.12, tolerance=0.05, per_token=True, n_fit=3, n_heldout=3, fit_drift=0.04,
        fit_agreement=1.0, heldout_drift=0.05, heldout_agreement=1.0, control_drift=0.31, control_agreement=0.5,
        rounds=[{"norm": 1.0, "drift": 0.01, "agreement": 1.0}],
    ).model_dump(mode="json")
    match = P.EmbeddingMatchSummary(
        n_pairs=2, converged=0.5, pixel_l2=P.Stat(mean=0.8, max=1.0), pixel_linf=P.Stat(mean=0.1, max=0.2),
        psnr_mean=31.4, distance_before=P.Stat(mean=0.9, max=1.0), distance_after=P.Stat(mean=0.04, max=0.05),
        cosine_after=P.Stat(mean=0.995, max=0.999), steps_mean=42.0, takes_target_class=1.0, keeps_source_class=0.0,
        pairs=[], target_semantics=P.TargetSemantics.model_validate(_semantics(image_id, target, scored)),
    ).model_dump(mode="json")
    jac = P.JacobianSummary(
        output="features", method="exact", exact=True, n_images=1, input_dim=3072, output_dim=192,
        numerical_rank=[191], singular_values_mean=list(np.geomspace(50, 1e-3, 192)), eps=[1e-3, 1e-1],
        lipschitz_random=[1.25, 1.3], lipschitz_top=[50.0, 49.0], lipschitz_null=[1e-6, 1e-4], top_over_random=40.0,
    ).model_dump(mode="json")
    return {"patch_embed_null": patch, "encoder_null": encoder, "embedding_match": match, "jacobian": jac}


def _section_html(page: str) -> str:
    start = page.index('id="section-input_space"')
    end = page.find("<section", start)
    return page[start:end if end > 0 else len(page)]


def test_section_is_registered_from_its_own_module():
    registry = create_registry()
    reg = registry.get("report_section", "input_space")
    assert reg.factory is InputSpaceSection and reg.plugin == "sing_audit.builtins.input_sections"
    keys = [s.key for s in collect_sections(registry)]
    assert keys.index("images") < keys.index("input_space") < keys.index("provenance")


def test_section_renders_every_probe_with_data():
    result = small_result(probes=probe_summaries())
    page = render_html(result)
    assert "could not be rendered" not in page
    html = _section_html(page)
    # patch embedding: dimensions, exact vs control, quantisation survival, the pair, IS/AS of the pair
    assert "576 of 768" in html and "64, 64, 64" in html
    assert "null perturbation (exact)" in html and "permuted control" in html and "saved as 8-bit" in html
    assert "Survives quantisation: 0.0%" in html
    assert html.count(PNG) == 3  # original, equivalent, difference
    assert "IS 3.25°" in html and "AS −1.50°" in html
    # encoder null, embedding match, jacobian
    assert "7.59" in html and "random control, same norm" in html and "0.31" in html
    assert "PSNR 31.4 dB" in html and "takes the other image's class 100.0%" in html
    assert "numerical rank 191" in html and "top singular direction" in html and "40.0×" in html
    imgs = [a.get("src", "") for t, a in elements(html).tags if t == "img"]
    assert sum(1 for s in imgs if s.startswith("data:image/png") and s != PNG) == 1  # the spectrum chart
    assert_self_contained(page)


def test_section_prints_too():
    page = render_report(small_result(probes=probe_summaries()), medium="print")
    assert 'id="section-input_space"' in page and "could not be rendered" not in page


def test_section_absent_without_input_probes():
    page = render_html(small_result(probes={"steering": {"targets": []}}))
    assert 'id="section-input_space"' not in page
    assert not InputSpaceSection().applies(small_result())
    # one probe is enough
    only = {"jacobian": probe_summaries()["jacobian"]}
    page = render_html(small_result(probes=only))
    assert 'id="section-input_space"' in page and "<h4>Patch-embedding null space" not in _section_html(page)


def test_section_escapes_text_and_refuses_foreign_pictures():
    bad = "javascript:alert(1)"
    probes = probe_summaries(image_id=XSS, target=XSS, png=PNG)
    probes["patch_embed_null"]["examples"].append(
        {"image_id": "evil", "original_png": bad, "equivalent_png": "data:image/png;base64,AAA\" onerror=\"x", "difference_png": bad}
    )
    probes["embedding_match"]["target_semantics"] = _semantics(scored=False)
    page = render_html(small_result(probes=probes))
    html = _section_html(page)
    assert XSS not in page and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert bad not in page and "onerror=\"x" not in page and "evil" not in html
    assert "not measured: no encoder &lt;img" in html
    assert_self_contained(page)


def test_unscored_semantics_say_why():
    page = render_html(small_result(probes=probe_summaries(scored=False)))
    html = _section_html(page)
    assert html.count("not measured") == 2 and "IS 3.25" not in html


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cli_run_with_input_probes_and_an_open_clip_target(tmp_path, monkeypatch):
    """A tiny ViT audited under a tiny open_clip target: item-5 fields in results.json, the section in the report."""
    pytest.importorskip("timm")
    open_clip = pytest.importorskip("open_clip")
    monkeypatch.setenv("SING_AUDIT_LOAD_PLUGINS", "sing-audit-timm,sing-audit-open-clip")  # the two families it needs
    from sing_audit.cli import main
    from sing_audit.synthetic import write_image_folder

    from .conftest import PIPELINE_POLICY, write_config
    from .test_image_audit import TINY_CLIP

    cfg_path = tmp_path / "sing-tiny-clip-e2e.json"
    cfg_path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg_path)
    root = write_image_folder(tmp_path / "val", per_class=2, size=40)
    cfg = write_config(tmp_path, {
        "output": "out",
        "dataset": {"plugin": "image_folder", "root": str(root)},
        "target": {"plugin": "open_clip", "name": "clip", "model": "sing-tiny-clip-e2e", "weights": "random"},
        "backbones": [{"name": "vit", "plugin": "timm", "model": "vit_tiny_patch16_224", "weights": "random", "img_size": 32}],
        "probes": [
            "null_removal",
            {"plugin": "patch_embed_null", "max_images": 2, "examples": 1},
            {"plugin": "embedding_match", "max_pairs": 2, "steps": 3},
            {"plugin": "encoder_null", "max_images": 4, "steps": 2, "max_rounds": 2},
            {"plugin": "jacobian", "max_images": 1, "eps": [1e-3, 1e-1], "n_random": 1},
        ],
        "policy": PIPELINE_POLICY,
        "run": {"device": "cpu", "batch_size": 8, "folds": 2, "bootstrap": 100},
    })
    assert main(["run", str(cfg)]) == 0
    out = tmp_path / "out"
    model = json.loads((out / "results.json").read_text())["models"][0]
    patch = model["probes"]["patch_embed_null"]
    sem = patch["target_semantics"]
    assert sem["scored"] is True and sem["target"] == "clip" and sem["n_images"] == 2
    assert sem["is_mean"] > 0 and sem["as_abs_mean"] is not None and len(sem["images"]) == 2
    assert {"image_score", "attribute_score", "image_id", "label"} <= set(sem["images"][0])
    assert patch["null_drift"]["max"] < 1e-5 and "quantised_exact" in patch
    msem = model["probes"]["embedding_match"]["target_semantics"]
    assert msem["scored"] is True and msem["as_other_mean"] is not None
    assert model["probes"]["encoder_null"]["norm"] >= 0 and model["probes"]["jacobian"]["singular_values_mean"]
    page = (out / "report.html").read_text()
    html = _section_html(page)
    assert "Patch-embedding null space" in html and "Under the target's own image encoder (clip)" in html
    assert "could not be rendered" not in page
    assert_self_contained(page)
