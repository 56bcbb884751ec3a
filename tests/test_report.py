"""The report: sections as plugins, self-contained HTML, PDF, escaping, size, and a look
through headless Chromium and pdftoppm."""

from __future__ import annotations

import base64
import csv
import html.parser
import importlib
import io
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import sing_audit
from sing_audit.testing import sample_result
from sing_audit.errors import SingAuditError
from sing_audit import hookimpl
from sing_audit.host import create_plugin_manager, create_registry
from sing_audit.report import (
    ReportRenderError,
    ReportSection,
    collect_sections,
    embed_image,
    read_images_csv,
    render_html,
    render_report,
)
from sing_audit.results import (
    AuditResult,
    ClassResult,
    Fidelity,
    ImageEvidence,
    Interval,
    ModelResult,
    Provenance,
    TargetAgreement,
)

XSS = "<img src=x onerror=alert(1)>"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
PDFTOPPM = shutil.which("pdftoppm")
PDFTOTEXT = shutil.which("pdftotext")
BUILTIN_KEYS = ["verdict", "models", "classes", "concepts", "steering", "trust", "images", "input_space", "provenance"]
#: sections that appear only when their probes ran
CONDITIONAL_KEYS = {"input_space"}
#: sections registered beside their probes (the rest by sing_audit.builtins.report_sections)
SECTION_MODULES = {
    "input_space": "sing_audit.builtins.input_sections",
    "concepts": "sing_audit.builtins.concepts_probe",
    "steering": "sing_audit.builtins.steering_probe",
}


@pytest.fixture(autouse=True)
def _builtins_only(monkeypatch):
    monkeypatch.setenv("SING_AUDIT_LOAD_PLUGINS", "")


# --------------------------------------------------------------------------- helpers


class _Elements(html.parser.HTMLParser):
    """Every start tag with its attributes (to look for injected elements and URLs)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def elements(page: str) -> _Elements:
    p = _Elements()
    p.feed(page)
    return p


def assert_self_contained(page: str) -> None:
    """No script, no external URL, no event handler; every picture a data: URI."""
    parsed = elements(page)
    for tag, attrs in parsed.tags:
        assert tag not in ("script", "iframe", "object", "embed", "link", "base"), tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name, value)
            if name in ("src", "href", "srcset", "poster", "data", "action"):
                assert value is not None
                assert value.startswith(("data:image/", "#")), (tag, name, value[:80])
    assert "@import" not in page
    assert re.search(r"url\(\s*['\"]?(?!data:)", page) is None


small_result = sample_result  # the tests' name for it


def run_chromium(page: Path, tmp_path: Path) -> tuple[str, str]:
    profile = tmp_path / f"chromium-profile-{uuid.uuid4().hex[:6]}"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--dump-dom", page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def console_problems(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(r"CONSOLE|Uncaught|Failed to load resource", line)]


def pdf_pages_png(pdf: Path, tmp_path: Path) -> list[Path]:
    prefix = tmp_path / f"page-{uuid.uuid4().hex[:6]}"
    subprocess.run([PDFTOPPM, "-r", "40", "-png", str(pdf), str(prefix)], check=True, capture_output=True, timeout=120)
    return sorted(tmp_path.glob(prefix.name + "*.png"))


def ink(png: Path) -> float:
    """Share of pixels that are not (nearly) white."""
    from PIL import Image

    with Image.open(png) as img:
        gray = np.asarray(img.convert("L"))
    return float((gray < 235).mean())


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it: apt-get install chromium)")
needs_pdftoppm = pytest.mark.skipif(PDFTOPPM is None, reason="pdftoppm is not installed (CI installs it: apt-get install poppler-utils)")


# --------------------------------------------------------------------------- the demo audit, once


@pytest.fixture(scope="module")
def demo(tmp_path_factory, scenario_dir):
    """The offline demo (synthetic scenario) run through sing_audit.run with html (the pdf
    reporter is the sing-audit-pdf family's, tested there), plus
    the probes whose summaries the report renders (their real output, not hand-built)."""
    import os

    old = os.environ.get("SING_AUDIT_LOAD_PLUGINS")
    os.environ["SING_AUDIT_LOAD_PLUGINS"] = ""
    try:
        out = tmp_path_factory.mktemp("demo") / "out"
        result = sing_audit.run({
            "name": "synthetic-demo",
            "output": str(out),
            "target": {"plugin": "precomputed", "name": "clip", "path": str(scenario_dir / "clip.npz")},
            "backbones": [
                {"name": "benign", "plugin": "precomputed", "path": str(scenario_dir / "benign.npz")},
                {"name": "leaky", "plugin": "precomputed", "path": str(scenario_dir / "leaky.npz")},
            ],
            "probes": ["null_removal", "nullspace_validation", "steering", "rank_sensitivity"],
            "report": {"formats": ["json", "csv", "html"]},
        })
    finally:
        if old is None:
            os.environ.pop("SING_AUDIT_LOAD_PLUGINS", None)
        else:
            os.environ["SING_AUDIT_LOAD_PLUGINS"] = old
    return result, out


# --------------------------------------------------------------------------- a large audit, built directly


def _thumbnail(path: Path, rng) -> None:
    from PIL import Image

    base = rng.integers(0, 255, size=(14, 14, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((112, 112), Image.BICUBIC)
    noise = rng.integers(-20, 20, size=(112, 112, 3))
    img = Image.fromarray(np.clip(np.asarray(img, dtype=int) + noise, 0, 255).astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=85)


def big_result(run_dir: Path, n_models: int = 5, n_classes: int = 1000, per_class: int = 20, seed: int = 0) -> AuditResult:
    """``n_models`` models × ``n_classes`` classes with per-image CSVs, thumbnails, concepts
    and steering toward every class: the worst case the report must stay small for."""
    rng = np.random.default_rng(seed)
    names = [f"class {k:04d} {['tabby cat', 'sports car', 'jellyfish', 'volcano', 'espresso'][k % 5]}" for k in range(n_classes)]
    models = []
    for j in range(n_models):
        labels = np.repeat(np.arange(n_classes), per_class)
        leak = rng.gamma(1.0, 0.6, size=n_classes)
        leak[rng.choice(n_classes, 3, replace=False)] += 12.0
        as_img = rng.normal(-leak[labels], 0.8)
        is_img = np.abs(rng.normal(3 + leak[labels], 1.0))
        rel = f"models/m{j}__clip/images.csv"
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        with (run_dir / rel).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image_id", "label", "class_name", "predicted", "fold", "is", "as", "as_contrast", "logit_drift"])
            for i in range(labels.size):
                w.writerow([f"img{i:06d}", labels[i], names[labels[i]], labels[i], i % 5, repr(float(is_img[i])),
                            repr(float(as_img[i])), repr(float(as_img[i] * 0.9)), "1e-15"])
        classes = []
        for k in range(n_classes):
            a = as_img[labels == k]
            s = is_img[labels == k]
            m_abs = float(np.mean(np.abs(a)))
            flagged = m_abs - 0.5 > 4.0
            classes.append(ClassResult(
                index=k, name=names[k], n=per_class, as_mean=float(a.mean()), as_abs_mean=m_abs,
                as_contrast=float(a.mean() * 0.9), is_mean=float(s.mean()),
                as_mean_ci=Interval(low=float(a.mean() - 0.4), high=float(a.mean() + 0.4)),
                as_abs_ci=Interval(low=m_abs - 0.5, high=m_abs + 0.5),
                as_contrast_ci=Interval(low=float(a.mean() * 0.9 - 0.4), high=float(a.mean() * 0.9 + 0.4)),
                is_ci=Interval(low=float(s.mean() - 0.3), high=float(s.mean() + 0.3)),
                flagged=flagged, outlier=flagged,
                flag_reasons=[f"mean |AS| {m_abs:.2f}° (95% CI {m_abs - 0.5:.2f}–{m_abs + 0.5:.2f}°) over {per_class} images: the lower bound is above the 4° threshold"] if flagged else [],
            ))
        order = np.argsort(-np.abs(as_img))[:12]
        top = []
        for i in order:
            thumb = f"thumbnails/m{j}_{i}.jpg"
            _thumbnail(run_dir / thumb, rng)
            top.append(ImageEvidence(image_id=f"img{i:06d}", label=int(labels[i]), class_name=names[labels[i]],
                                     as_score=float(as_img[i]), is_score=float(is_img[i]), as_contrast=float(as_img[i] * 0.9),
                                     thumbnail=thumb))
        concepts = {"per_class": {names[k]: [{"concept": f"concept {c}", "as": float(rng.normal(0, 3)), "angle": float(rng.uniform(60, 90))}
                                             for c in range(10)] for k in range(n_classes)}}
        steering = {"epsilon_mode": "relative", "epsilon": 1.0, "zero_directions": 0, "targets": [
            {"prompt": names[k], "source": "all other classes", "n": per_class * (n_classes - 1), "as_mean": float(rng.normal(5, 2)),
             "as_std": float(rng.uniform(1, 3)), "is_mean": float(rng.uniform(5, 10)), "epsilon": 1.0, "logit_drift": 2e-15,
             "zero_directions": 0} for k in range(n_classes)]}
        n_flag = sum(c.flagged for c in classes)
        models.append(ModelResult(
            name=f"model-{j}", backbone=f"model-{j}", target="clip", random_weights=False, rank_rule="rank",
            rank=n_classes, null_dim=2048 - n_classes, num_features=2048, num_classes=n_classes, null_energy=0.4,
            n_images=int(labels.size), is_mean=float(is_img.mean()), as_abs_mean=float(np.abs(as_img).mean()),
            as_abs_ci=Interval(low=0.5, high=0.7), is_as_ratio=float(is_img.mean() / np.abs(as_img).mean()),
            is_as_ratio_ci=Interval(low=3.0, high=5.0), summary=f"model-{j} hides class meaning for {n_flag} classes.",
            policy_failures=[f"{n_flag} flagged class(es)"], fidelity=Fidelity(cosine=0.8, r2=0.6, mse=0.002, folds=5, translator="linear", null_energy=0.3),
            n_flagged=n_flag, n_outliers=n_flag, flagged_classes=[c.name for c in classes if c.flagged], passed=False,
            classes=classes, top_images=top, probes={"concepts": concepts, "steering": steering,
                                                     "nullspace_validation": {"null": 1e-16, "random": 0.3, "principal": 0.5, "passed": True}},
            files={"images_csv": rel}, weights_digest="sha256:" + "ab" * 32,
        ))
    return AuditResult(
        name="large", passed=False, verdict="FAILED", models=models,
        policy={"as_threshold": 4.0, "min_images": 10, "max_flagged": 0, "warn_fidelity": 0.5},
        provenance=Provenance(config={"name": "large"}, versions={"sing-audit": "0.1.0"}, stage_seconds={"translator": 10.0}),
    )


# --------------------------------------------------------------------------- sections as plugins


def test_builtin_sections_are_registered_section_plugins():
    registry = create_registry()
    sections = collect_sections(registry)
    assert [s.key for s in sections] == BUILTIN_KEYS
    assert [s.order for s in sections] == sorted(s.order for s in sections)
    for s in sections:
        assert isinstance(s, ReportSection)
        assert not hasattr(s, "formats")  # a section is never mistaken for a reporter
        assert s.title and s.template
    assert sorted(registry.names("report_section")) == sorted(BUILTIN_KEYS)
    assert not [n for n in registry.names("reporter") if n.startswith("section")]  # sections are not reporters
    for key in BUILTIN_KEYS:
        assert registry.get("report_section", key).plugin == SECTION_MODULES.get(key, "sing_audit.builtins.report_sections")


def test_a_section_that_is_not_a_report_section_is_a_plugin_error():
    from sing_audit.errors import PluginError

    class Plugin:
        @hookimpl
        def register_report_sections(self, register):
            register("bogus", object)

    pm = create_plugin_manager(load_entry_points=False)
    pm.register(Plugin(), name="bogus-sections")
    with pytest.raises(PluginError, match="'bogus'.*not a ReportSection"):
        collect_sections(create_registry(pm))


def test_a_section_name_is_not_a_report_format(synthetic_config):
    from sing_audit.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown format 'section:verdict'"):
        sing_audit.run(synthetic_config(report={"formats": ["json", "section:verdict"]}))


SECTION_PLUGIN = '''
from sing_audit import hookimpl
from sing_audit.report import ReportSection


class LicenceSection(ReportSection):
    """Who may use the audited models."""

    key = "licence"
    title = "Licences"
    order = 15
    template = "<p class='licence'>{{ note }} for {{ result.models|length }} model(s) ({{ medium }})</p>"

    def context(self, result, run_dir):
        return {"note": "Internal use only"}


class FileSection(ReportSection):
    key = "from-file"
    title = "From a file"
    order = 85
    template = "TEMPLATE_NAME"

    def applies(self, result):
        return any(m.name == "m1" for m in result.models)

    def context(self, result, run_dir):
        return {"word": "<b>bold?</b>"}


class NeverSection(ReportSection):
    key = "never"
    title = "Never shown"
    template = "<p>never</p>"

    def applies(self, result):
        return False


class BrokenSection(ReportSection):
    key = "broken"
    title = "Broken"
    order = 86
    template = "<p>{{ missing_variable }}</p>"


@hookimpl
def register_report_sections(register):
    register("licence", LicenceSection)
    register("from-file", FileSection)
    register("never", NeverSection)
    register("broken", BrokenSection)
'''


@pytest.fixture
def section_plugin(tmp_path, monkeypatch):
    """An installed distribution ``sing-audit-licence`` whose plugin adds report sections."""
    module = f"sa_section_plugin_{uuid.uuid4().hex[:8]}"
    template = f"{module}_section.html.j2"
    root = tmp_path / "site"
    root.mkdir()
    (root / f"{module}.py").write_text(SECTION_PLUGIN.replace("TEMPLATE_NAME", template), encoding="utf-8")
    (root / template).write_text("<p class='from-file'>{{ word }}</p>", encoding="utf-8")
    info = root / "sing_audit_licence-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sing-audit-licence\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[sing_audit]\nlicence = {module}\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("SING_AUDIT_LOAD_PLUGINS", raising=False)
    importlib.invalidate_caches()
    yield module
    sys.modules.pop(module, None)
    importlib.invalidate_caches()


def test_third_party_section_renders_in_order(section_plugin, tmp_path):
    from sing_audit.builtins.reporters import HtmlReporter

    keys = [s.key for s in collect_sections()]
    assert keys.index("verdict") < keys.index("licence") < keys.index("models")
    assert "never" in keys  # registered, but applies() says no
    result = small_result()
    [path] = HtmlReporter().write(result, tmp_path, "html")
    page = path.read_text(encoding="utf-8")
    assert "<p class='licence'>Internal use only for 1 model(s) (screen)</p>" in page
    assert "<p class='from-file'>&lt;b&gt;bold?&lt;/b&gt;</p>" in page  # plugin templates are autoescaped too
    assert 'id="section-never"' not in page
    assert page.index('id="section-verdict"') < page.index('id="section-licence"') < page.index('id="section-models"')
    # a broken section is reported in its place; the rest of the report stands
    broken = page[page.index('id="section-broken"'):]
    assert "could not be rendered" in broken and "missing_variable" in broken
    assert 'id="section-provenance"' in page
    assert_self_contained(page)


# --------------------------------------------------------------------------- hand-built results


def test_optional_sections_only_when_their_probes_ran(tmp_path):
    page = render_html(small_result(), tmp_path)
    assert 'id="section-concepts"' not in page and 'id="section-steering"' not in page
    probes = {
        "concepts": {"per_class": {"cat": [{"concept": "whiskers", "as": 7.5, "angle": 71.0},
                                           {"concept": "striped fur", "as": -2.25, "angle": 80.0}]},
                     "sets": [{"name": "attributes", "version": "1", "size": 312}], "model_top": [{"concept": "whiskers", "as": 3.0}]},
        "steering": {"epsilon_mode": "relative", "epsilon": 0.5, "targets": [
            {"prompt": "a red car", "as_mean": 12.34, "as_std": 1.5, "epsilon": 0.5, "logit_drift": 3e-15},
            {"prompt": "dog", "as_mean": 8.0, "as_std": 2.0, "epsilon": 0.5, "logit_drift": 2e-15}]},
    }
    page = render_html(small_result(probes=probes), tmp_path)
    concepts = page[page.index('id="section-concepts"'):page.index('id="section-steering"')]
    assert "whiskers" in concepts and "7.50°" in concepts and "71.0°" in concepts and "striped fur" in concepts
    assert "attributes" in concepts and "312 concepts" in concepts
    assert concepts.count("data:image/png;base64,") == 1  # the chart
    steering = page[page.index('id="section-steering"'):page.index('id="section-trust"')]
    assert "“a red car”" in steering and "12.34 ± 1.50°" in steering and "3.0e-15" in steering
    assert "<td>m1</td>" in steering  # Table 1 layout: one row per model, prompts as columns


def test_steering_with_many_prompts_is_transposed_and_shortened_in_print(tmp_path):
    targets = [{"prompt": f"prompt {k}", "as_mean": float(k), "as_std": 0.5, "epsilon": 1.0, "logit_drift": 1e-15} for k in range(40)]
    result = small_result(probes={"steering": {"epsilon_mode": "absolute", "targets": targets}})
    screen = render_report(result, tmp_path)
    printed = render_report(result, tmp_path, medium="print")
    section = screen[screen.index('id="section-steering"'):]
    assert "<th>target prompt</th>" in section and "“prompt 0”" in section
    psection = printed[printed.index('id="section-steering"'):]
    assert "“prompt 39”" in psection and "“prompt 0”" not in psection  # the 30 strongest are kept
    assert "Showing the 30 of 40 prompts" in psection


def test_verdict_and_per_class_content(tmp_path):
    page = render_html(small_result(), tmp_path)
    verdict = page[page.index('id="section-verdict"'):page.index('id="section-models"')]
    assert "FAILED" in verdict and "m1 leaks for cat." in verdict
    assert "1 flagged class(es) (cat), more than the 0 allowed" in verdict
    assert "1.70" in verdict and "[1.50, 1.90]" in verdict  # IS/AS ratio with its interval
    classes = page[page.index('id="section-classes"'):page.index('id="section-trust"')]
    assert classes.index("cat") < classes.index("dog")  # sorted by mean |AS|
    assert '<tr class="flagged"><td>cat' in classes and "mean |AS| 5.5° above 4°" in classes
    assert '<span class="tag out">outlier</span>' in classes
    assert '<tr class="waived"><td>dog' in classes and "known issue, ticket 42" in classes and "2031-01-01" in classes
    assert "Per-image values are not available" in classes  # no images.csv: said, not failed


def test_no_null_space_is_explained(tmp_path):
    vit = ModelResult(name="vit", backbone="vit", target="clip", random_weights=False, rank_rule="rank", rank=192, null_dim=0,
                      num_features=192, num_classes=1000, null_energy=0.0, n_images=12, is_mean=0.0, as_abs_mean=0.0)
    page = render_html(small_result(extra_models=[vit]), tmp_path)
    assert "undefined: no null space" in page
    assert "vit</b> has no exact null space under the <b>rank</b> rule" in page
    assert "IS/AS ratio is undefined (not zero)" in page


def test_trust_section_warns_and_reports_checks(tmp_path):
    other = small_result(model_name="m2").models[0].model_copy(update={"target": "eva02"})
    probes = {"nullspace_validation": {"null": 2e-16, "random": 0.31, "principal": 0.45, "null_max": 5e-16, "passed": True}}
    result = small_result(cosine=0.2, probes=probes, extra_models=[other],
                          target_agreement=[TargetAgreement(targets=["clip", "eva02"], models=["m1", "m2"], kendall_tau=-1.0, same_order=False)])
    page = render_html(result, tmp_path)
    trust = page[page.index('id="section-trust"'):page.index('id="section-provenance"')]
    assert "held-out translator cosine 0.200 is below the warning floor 0.5" in trust
    assert "2.0e-16" in trust and "0.31" in trust and "0.45" in trust and "leaves the logits unchanged" in trust
    assert "clip vs eva02" in trust and "the targets disagree" in trust
    failed = small_result(probes={"nullspace_validation": {"error": "the head normalises its input"}})
    page = render_html(failed, tmp_path)
    assert "check failed: the head normalises its input" in page


def _jpeg(path: Path, color=(200, 30, 30)) -> bytes:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path, format="JPEG")
    return path.read_bytes()


def test_thumbnails_are_embedded_only_from_inside_the_run_folder(tmp_path):
    run = tmp_path / "run"
    data = _jpeg(run / "thumbnails" / "a.jpg")
    _jpeg(tmp_path / "outside.jpg", (0, 0, 255))
    (run / "thumbnails" / "fake.jpg").write_text("not a picture")
    top = [
        ImageEvidence(image_id="a", label=0, class_name="cat", as_score=9.0, is_score=10.0, thumbnail="thumbnails/a.jpg"),
        ImageEvidence(image_id="escape", label=0, class_name="cat", as_score=8.0, is_score=9.0, thumbnail="../outside.jpg"),
        ImageEvidence(image_id="absolute", label=0, class_name="cat", as_score=8.0, is_score=9.0, thumbnail=str(tmp_path / "outside.jpg")),
        ImageEvidence(image_id="fake", label=0, class_name="cat", as_score=7.0, is_score=8.0, thumbnail="thumbnails/fake.jpg"),
        ImageEvidence(image_id="gone", label=1, class_name="dog", as_score=6.0, is_score=7.0, thumbnail="thumbnails/gone.jpg"),
    ]
    assert embed_image(run, "thumbnails/a.jpg") == "data:image/jpeg;base64," + base64.b64encode(data).decode()
    assert embed_image(run, "../outside.jpg") is None
    assert embed_image(run, str(tmp_path / "outside.jpg")) is None
    assert embed_image(run, "thumbnails/fake.jpg") is None
    assert embed_image(None, "thumbnails/a.jpg") is None
    page = render_html(small_result(top_images=top), run)
    images = page[page.index('id="section-images"'):page.index('id="section-provenance"')]
    assert images.count("data:image/jpeg;base64,") == 1
    assert images.count("no picture") == 4
    assert_self_contained(page)


def test_per_image_csv_is_read_from_inside_the_run_folder_only(tmp_path):
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    rows = "image_id,label,class_name,predicted,fold,is,as,as_contrast,logit_drift\n"
    rows += "".join(f"i{k},{k % 2},x,{k % 2},0,{k},{(-1) ** k * k},0,0\n" for k in range(40))
    (run / "models" / "images.csv").write_text(rows)
    (tmp_path / "outside.csv").write_text(rows)
    table = read_images_csv(run, "models/images.csv")
    assert table is not None and table.n_rows == 40 and sorted(table.as_by_label) == [0, 1]
    assert table.as_by_label[1].tolist() == [-float(k) for k in range(1, 40, 2)]
    assert read_images_csv(run, "../outside.csv") is None
    assert read_images_csv(run, "models/missing.csv") is None
    page = render_html(small_result(files={"images_csv": "models/images.csv"}), run)
    classes = page[page.index('id="section-classes"'):page.index('id="section-trust"')]
    assert "Per-image AS of the" in classes and "not available" not in classes
    page = render_html(small_result(files={"images_csv": "../outside.csv"}), run)
    assert "Per-image values are not available: ../outside.csv is not in the run folder" in page


def test_escaping_in_every_user_controlled_field(tmp_path):
    probes = {
        "concepts": {"per_class": {XSS: [{"concept": XSS, "as": 5.0, "angle": 70.0}]}},
        "steering": {"targets": [{"prompt": XSS, "as_mean": 1.0, "as_std": 0.1, "epsilon": 1.0, "logit_drift": 0.0}]},
        "nullspace_validation": {"error": XSS},
    }
    top = [ImageEvidence(image_id=XSS, label=0, class_name=XSS, as_score=1.0, is_score=2.0, thumbnail=XSS)]
    result = small_result(name0=XSS, model_name=XSS, audit_name=XSS, probes=probes, top_images=top)
    result.models[0].classes[1].waiver_reason = XSS
    for medium in ("screen", "print"):
        page = render_report(result, tmp_path, medium=medium)
        assert "<img src=x" not in page and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
        assert page.count("&lt;img src=x onerror=alert(1)&gt;") >= 8
        assert_self_contained(page)
        assert not [t for t, a in elements(page).tags if t == "img" and a.get("src") == "x"]


# --------------------------------------------------------------------------- the demo, rendered by the runner


@pytest.mark.slow
def test_demo_report_has_every_section(demo):
    result, out = demo
    assert result.files["html"] == "report.html"
    page = (out / "report.html").read_text(encoding="utf-8")
    for key in ("verdict", "models", "classes", "steering", "trust", "images", "provenance"):
        assert f'id="section-{key}"' in page, key
    assert 'id="section-concepts"' not in page  # that probe did not run
    assert "could not be rendered" not in page
    steering = page[page.index('id="section-steering"'):page.index('id="section-trust"')]
    assert "<th>target prompt</th>" in steering and "“sports car”" in steering  # 10 class prompts: transposed
    trust = page[page.index('id="section-trust"'):page.index('id="section-images"')]
    assert trust.count("the null space leaves the logits unchanged") == 2
    assert "Sensitivity to the null-space threshold" in page
    assert_self_contained(page)
    assert len(page.encode()) < 1_000_000
    classes = page[page.index('id="section-classes"'):page.index('id="section-trust"')]
    for name in ("sports car", "jellyfish"):
        assert f'<tr class="flagged"><td>{name} ' in classes
    # scatter, ratio bars, threshold sensitivity + one violin plot per model
    assert page.count('src="data:image/png;base64,') == 5


@pytest.mark.slow
@needs_chromium
def test_demo_html_loads_in_chromium_without_console_errors(demo, tmp_path):
    _, out = demo
    dom, stderr = run_chromium(out / "report.html", tmp_path)
    assert console_problems(stderr) == []
    for key in ("verdict", "models", "classes", "steering", "trust", "images", "provenance"):
        assert f'id="section-{key}"' in dom, key
    assert "FAILED" in dom and "Per-class analysis" in dom
    assert all(a.get("src", "").startswith("data:image/png;base64,") for t, a in elements(dom).tags if t == "img")


@pytest.mark.slow
@needs_chromium
def test_hostile_names_are_text_in_the_browser(tmp_path):
    probes = {"concepts": {"per_class": {XSS: [{"concept": XSS, "as": 5.0, "angle": 70.0}]}}}
    result = small_result(name0=XSS, probes=probes)
    page = tmp_path / "report.html"
    page.write_text(render_html(result, tmp_path), encoding="utf-8")
    dom, stderr = run_chromium(page, tmp_path)
    assert console_problems(stderr) == []
    parsed = elements(dom)
    assert not [a for t, a in parsed.tags if t == "img" and (a.get("src") == "x" or "onerror" in a)]
    assert sum(XSS in chunk for chunk in parsed.text) >= 3  # rendered as text, in the table and the concepts


# --------------------------------------------------------------------------- size and time at scale


@pytest.mark.slow
def test_five_models_thousand_classes_stay_under_five_megabytes(tmp_path, record_property):
    from sing_audit import plots

    result = big_result(tmp_path, n_models=5, n_classes=1000, per_class=10)
    plots._CACHE.clear()
    start = time.perf_counter()
    page = render_html(result, tmp_path)
    seconds = time.perf_counter() - start
    size = len(page.encode("utf-8"))
    record_property("html_bytes", size)
    record_property("html_seconds", round(seconds, 2))
    print(f"5 models × 1000 classes: report.html {size / 1e6:.2f} MB in {seconds:.1f} s")
    assert size < 5_000_000
    assert seconds < 60
    assert "could not be rendered" not in page
    assert_self_contained(page)
    for key in BUILTIN_KEYS:
        assert (f'id="section-{key}"' in page) != (key in CONDITIONAL_KEYS), key
    # every class of every model is in the screen table; thumbnails are embedded
    assert page.count('<tr class="flagged">') >= 5
    assert page.count("<td>class 0999 espresso <span") == 5
    assert page.count("data:image/jpeg;base64,") == 5 * 12


def test_chart_labels_are_literal_text():
    """Dollar signs and backslashes in class names must not reach matplotlib's mathtext."""
    from sing_audit import plots

    names = ["$\\frac{1", "50$ off $x^2$", XSS, "\\", "tab\tand\nnewline"]
    values = [np.linspace(-1, 1, 5) * (k + 1) for k in range(len(names))]
    for uri in (
        plots.violins(names, values, highlight=[True, False, False, False, False], threshold=4.0, split=3),
        plots.scatter_is_as([plots.ScatterSeries(XSS, [1.0, 2.0, 3.0, 2.5], [0.5, -1.0, 2.0, 0.1], [True, False, False, False],
                                                 names[:4], annotate=[0, 1])]),
        plots.ratio_bars(names[:2], [1.5, None], [1.0, None], [2.0, None]),
        plots.concept_bars([(names[1], [(names[0], 2.0, 70.0), (XSS, -1.0, None)])]),
    ):
        assert uri.startswith("data:image/png;base64,")
        from PIL import Image

        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as img:
            assert img.width > 500 and img.height > 100


def test_renderings_and_translator_families_when_present(tmp_path):
    from sing_audit.results import TranslatorComparison

    run = tmp_path / "run"
    _jpeg(run / "thumbnails" / "a.jpg")
    _jpeg(run / "renders" / "a_orig.png")
    _jpeg(run / "renders" / "a_equiv.png", (0, 200, 0))
    top = [ImageEvidence(image_id="a", label=0, class_name="cat", as_score=9.0, is_score=10.0, thumbnail="thumbnails/a.jpg")]
    probes = {"renderings": {"images": {"a": {"original": "renders/a_orig.png", "equivalent": "renders/a_equiv.png"}}}}
    result = small_result(top_images=top, probes=probes)
    result.models[0].translator_comparison = [
        TranslatorComparison(translator="mlp3", linear=False, cosine=0.95, r2=0.9, mse=0.001, is_mean=6.0, as_abs_mean=3.1)
    ]
    page = render_html(result, run)
    images = page[page.index('id="section-images"'):page.index('id="section-provenance"')]
    assert images.count("data:image/jpeg;base64,") == 2 and "original" in images and "equivalent" in images
    trust = page[page.index('id="section-trust"'):page.index('id="section-images"')]
    assert "Other translator families" in trust and "mlp3" in trust and "(non-linear)" in trust and "0.950" in trust


# --------------------------------------------------------------------------- a user's own templates


def test_a_users_template_folder_overrides_and_extends_the_builtin_ones(synthetic_config, tmp_path):
    """report.templates is searched first: a file of a built-in name replaces it, and
    "default:NAME" reaches the built-in one to extend it."""
    from sing_audit.cli import main

    folder = tmp_path / "my-templates"
    folder.mkdir()
    (folder / "section_verdict.html.j2").write_text(
        "<p class=\"mine\">Our own verdict: {{ result.outcome }} — {{ rows|length }} models</p>", encoding="utf-8"
    )
    (folder / "report.html.j2").write_text(
        '{% extends "default:report.html.j2" %}', encoding="utf-8"
    )
    cfg = synthetic_config(report={"formats": ["json", "html"], "templates": "my-templates"})
    assert main(["run", str(cfg)]) == 1
    out = tmp_path / "out"
    html = (out / "report.html").read_text(encoding="utf-8")
    assert '<p class="mine">Our own verdict: failed — 2 models</p>' in html
    assert '<div class="verdict-box' not in html and "Per-class analysis" in html  # the rest is the built-in report
    recorded = json.loads((out / "results.json").read_text())["provenance"]["config"]["report"]["templates"]
    assert recorded == str(folder.resolve())
    # re-rendering from results.json alone uses the same folder
    (out / "report.html").unlink()
    assert main(["report", str(out), "--format", "html"]) == 0
    assert "Our own verdict" in (out / "report.html").read_text(encoding="utf-8")


def test_a_missing_template_folder_is_a_config_error(synthetic_config, tmp_path, capsys):
    from sing_audit.cli import main

    cfg = synthetic_config(report={"templates": "nowhere"})
    assert main(["validate", str(cfg)]) == 2
    assert "report.templates" in capsys.readouterr().err
