"""Open-vocabulary concept sets and the ``concepts`` probe.

Concept sets (imagenet1k, attributes, user files and their errors, digests), the pure
per-class math against closed-form answers, the probe on a hand-built context, end to
end on the synthetic demo with a precomputed target, and a tiny random-init open_clip
model for the text-encoder path.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from pydantic import ValidationError

from sing_audit.cli import main
from sing_audit.components import DEFAULT_TEMPLATES, Target
from sing_audit.concepts import (
    ConceptAccumulator,
    check_templates,
    concept_digest,
    concept_scores,
    ensemble_embeddings,
    rank_by_magnitude,
)
from sing_audit.errors import ConfigError, DataError
from sing_audit.host import create_registry
from sing_audit.nullspace import split_head
from sing_audit.builtins.concept_sets import (
    AttributeConcepts,
    FileConcepts,
    ImageNet1kConcepts,
    attribute_versions,
)
from sing_audit.builtins.concepts_probe import ConceptsProbe
from sing_audit.probes import ProbeContext
from sing_audit.synthetic import CLASS_NAMES, PLANTED

from .conftest import write_config

#: the shipped attribute vocabulary, pinned: editing a released version must fail here
ATTRIBUTES_VERSION = "1.0"
ATTRIBUTES_DIGEST = "sha256:3945e9f792c235761616680851185ed255fd2aef4a852c1e27c4319a7faab7d7"


def _file_set(path, **options) -> FileConcepts:
    return FileConcepts(FileConcepts.Options(path=path, **options))


# --------------------------------------------------------------------------- built-in sets


def test_registered_names():
    reg = create_registry()
    assert {"imagenet1k", "attributes", "file"} <= set(reg.names("concept_set"))
    assert "concepts" in reg.names("probe")
    for name in ("imagenet1k", "attributes", "file"):
        assert reg.get("concept_set", name).options_model is not None


def test_imagenet1k_has_1000_unique_readable_names():
    s = ImageNet1kConcepts()
    names = s.concepts()
    assert len(names) == 1000
    assert len({n.casefold() for n in names}) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[2] == "great white shark"
    assert names[134] == "crane bird" and names[517] == "construction crane"
    assert names[638] == "maillot" and names[639] == "tank suit"
    assert not any("," in n or n.startswith("n0") for n in names)
    assert s.name == "imagenet1k" and s.version
    assert s.digest() == concept_digest(names) and s.describe()["size"] == 1000


def test_attribute_vocabulary_is_broad_unique_and_pinned():
    s = AttributeConcepts()
    words = s.concepts()
    assert 300 <= len(words) <= 600
    assert len({w.casefold() for w in words}) == len(words)
    for w in ("red", "striped", "furry", "wood", "forest", "wheel", "round", "low light",
              "motion blur", "cluttered background", "overexposed", "close-up"):
        assert w in words, w
    assert all(w == w.strip() and w and "#" not in w for w in words)
    assert s.name == "attributes" and s.version == ATTRIBUTES_VERSION
    assert ATTRIBUTES_VERSION in attribute_versions()
    # a changed vocabulary needs a new version file, never an edit in place
    assert s.digest() == ATTRIBUTES_DIGEST
    with pytest.raises(ValidationError, match="shipped"):
        AttributeConcepts.Options(version="0.9")


def test_digest_is_stable_and_order_sensitive():
    assert concept_digest(["red", "blue"]) == concept_digest(["red", "blue"])
    assert concept_digest(["red", "blue"]) != concept_digest(["blue", "red"])
    # pinned: the digest is sha256 of the compact JSON list, so results stay comparable
    assert concept_digest(["red", "blue"]) == "sha256:" + hashlib.sha256(b'["red","blue"]').hexdigest()
    assert concept_digest(["a", "b c"]) != concept_digest(["a b", "c"])


# --------------------------------------------------------------------------- user files


def test_txt_file_with_comments_and_version(tmp_path):
    (tmp_path / "c.txt").write_text(
        "# my vocabulary\n# version: 2024.2\n\nred   wine\nstriped  # a pattern\n  tall grass \n# done\n", encoding="utf-8"
    )
    s = _file_set("c.txt", base_dir=tmp_path)
    assert s.concepts() == ["red wine", "striped", "tall grass"]
    assert s.name == "c" and s.version == "2024.2"
    named = _file_set(tmp_path / "c.txt", name="mine", version="v9")
    assert named.name == "mine" and named.version == "v9"
    assert named.digest() == s.digest()


def test_yaml_list_mapping_and_groups_and_csv_agree(tmp_path):
    (tmp_path / "l.yaml").write_text("- red\n- striped\n- 'yes'\n", encoding="utf-8")
    (tmp_path / "m.yaml").write_text("version: '3'\nconcepts: [red, striped, 'yes']\n", encoding="utf-8")
    (tmp_path / "g.yml").write_text("colours: [red]\npatterns:\n  - striped\n  - 'yes'\n", encoding="utf-8")
    (tmp_path / "c.csv").write_text("id,concept,note\n1,red,x\n\n2,striped,\n3,yes,z\n", encoding="utf-8")
    sets = [_file_set(p, base_dir=tmp_path) for p in ("l.yaml", "m.yaml", "g.yml", "c.csv")]
    assert all(s.concepts() == ["red", "striped", "yes"] for s in sets)
    assert len({s.digest() for s in sets}) == 1
    assert sets[1].version == "3" and sets[0].version == "unversioned"


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("e.txt", "# only comments\n\n", "no concepts"),
        ("d.txt", "red\nblue\n\nRed\n", r"d\.txt, line 4: duplicate concept 'Red' \(first at line 1\)"),
        ("b.txt", "red\n{}\n", "line 2: .*braces"),
        ("e.yaml", "", "empty"),
        ("d.yaml", "- red\n- blue\n- red\n", r"line 3: duplicate concept 'red' \(first at line 1\)"),
        ("n.yaml", "- red\n- [blue]\n", "line 2: each concept must be a plain string"),
        ("x.yaml", "- red\n-\n", "line 2: empty concept"),
        ("k.yaml", "concepts: [red]\nwords: [blue]\n", "unknown key"),
        ("s.yaml", "red\n", "single value"),
        ("m.csv", "word\nred\n", "line 1: the header has no 'concept' column"),
        ("d.csv", "concept\nred\nblue\nred\n", r"line 4: duplicate concept 'red' \(first at line 2\)"),
        ("c.csv", "concept,other\nred,1\n,2\n", "line 3: empty concept"),
        ("h.csv", "concept\n", "no concepts"),
        ("w.json", '["red"]', "must be .txt, .yaml, .yml or .csv"),
    ],
)
def test_bad_files_name_the_line(tmp_path, name, text, match):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        _file_set(tmp_path / name).concepts()


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="concept file not found"):
        _file_set(tmp_path / "nope.txt").concepts()


# --------------------------------------------------------------------------- pure math


def _orthogonal_case(seed: int = 0, images: int = 4, ratio: float = 3.0):
    """Features whose translated null component ``v = A Π_n f`` points along one unit
    concept ``t`` and is orthogonal to ``u = T(f̃) = A f_p + c``; then, in closed form,
    ``angle(T(f), t) = atan(|u| / |v|)``, ``angle(T(f̃), t) = 90°`` and
    ``AS = −atan(|v| / |u|)`` (degrees)."""
    rng = np.random.default_rng(seed)
    c_classes, m, n = 3, 12, 8
    w = rng.normal(size=(c_classes, m))
    sub = split_head(w, "rank", weight_eps=float(np.finfo(np.float64).eps))
    a = rng.normal(size=(n, m))
    bias = rng.normal(size=n)
    f_p = rng.normal(size=(images, c_classes)) @ sub.principal.T  # principal parts
    u = f_p @ a.T + bias  # T(f̃)
    # a null direction whose translation is orthogonal to every u_i
    a_n = a @ sub.null  # n×(m−r)
    constraints = u @ a_n  # images×(m−r): x must be orthogonal to these rows
    _, _, vt = np.linalg.svd(constraints)
    x = vt[-1]  # in the orthogonal complement (m−r = 9 > images)
    v_dir = a_n @ x
    t = v_dir / np.linalg.norm(v_dir)
    scale = ratio * np.linalg.norm(u, axis=1) / np.linalg.norm(v_dir) * np.linspace(0.5, 1.5, images)
    f = f_p + (scale[:, None] * x[None, :]) @ sub.null.T
    v = (f - f_p) @ a.T
    assert np.allclose(v @ u.T * np.eye(images), 0, atol=1e-9)
    expected_as = -np.degrees(np.arctan(np.linalg.norm(v, axis=1) / np.linalg.norm(u, axis=1)))
    expected_angle = np.degrees(np.arctan(np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)))
    return {"w": w, "sub": sub, "a": a, "bias": bias, "f": f, "t": t, "expected_as": expected_as, "expected_angle": expected_angle, "rng": rng}


def test_null_component_aligned_with_a_concept_gives_the_closed_form_as():
    case = _orthogonal_case()
    a, bias, f, sub = case["a"], case["bias"], case["f"], case["sub"]
    from sing_audit.nullspace import remove_null

    t_f = f @ a.T + bias
    t_r = remove_null(f, sub) @ a.T + bias
    others = case["rng"].normal(size=(5, a.shape[0]))
    concepts = np.vstack([others[:2], case["t"], others[2:]])  # the aligned concept at index 2
    labels = np.zeros(f.shape[0], dtype=int)
    res = concept_scores(t_f, t_r, labels, concepts, num_classes=2, chunk_rows=3)
    assert res.counts.tolist() == [f.shape[0], 0]
    assert res.as_mean[0, 2] == pytest.approx(case["expected_as"].mean(), abs=1e-9)
    assert res.angle_mean[0, 2] == pytest.approx(case["expected_angle"].mean(), abs=1e-9)
    assert rank_by_magnitude(res.as_mean[0])[0] == 2
    assert rank_by_magnitude(res.model_abs_as_mean)[0] == 2
    assert res.model_abs_as_mean[2] == pytest.approx(np.abs(case["expected_as"]).mean(), abs=1e-9)
    assert np.isnan(res.as_mean[1]).all()  # a class without images has no mean


def test_chunked_accumulation_matches_direct_per_class_means():
    rng = np.random.default_rng(3)
    n, d, k, c = 37, 6, 9, 4
    t_f, t_r, concepts = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(k, d))
    labels = rng.integers(0, c, size=n)
    from sing_audit.scores import angle_matrix

    before = angle_matrix(t_f, concepts)
    as_ = before - angle_matrix(t_r, concepts)
    for chunk in (1, 5, 100):
        res = concept_scores(t_f, t_r, labels, concepts, num_classes=c, chunk_rows=chunk)
        for ci in range(c):
            sel = labels == ci
            assert res.counts[ci] == sel.sum()
            assert np.allclose(res.as_mean[ci], as_[sel].mean(axis=0), atol=1e-10)
            assert np.allclose(res.angle_mean[ci], before[sel].mean(axis=0), atol=1e-10)
        assert np.allclose(res.model_abs_as_mean, np.abs(as_).mean(axis=0), atol=1e-10)
        assert np.allclose(res.model_as_mean, as_.mean(axis=0), atol=1e-10)
    with pytest.raises(ValueError, match="labels"):
        ConceptAccumulator(concepts, 2).add(t_f, t_r, labels)


def test_rank_by_magnitude_ties_and_nan():
    assert rank_by_magnitude(np.array([1.0, -3.0, 3.0, np.nan, 0.5])).tolist() == [1, 2, 0, 4, 3]
    assert rank_by_magnitude(np.array([1.0, -3.0, 2.0]), 2).tolist() == [1, 2]


class _FakeTextTarget(Target):
    """A target whose 'text encoder' is a fixed random map of the prompt's characters."""

    def __init__(self, dim: int, templates=DEFAULT_TEMPLATES, table: dict | None = None):
        self.dim = dim
        self.templates = tuple(templates)
        self.table = table or {}
        self.calls = 0

    def describe(self):
        return {"plugin": "fake"}

    def encode_text(self, prompts):
        self.calls += 1
        out = []
        for p in prompts:
            if p in self.table:
                out.append(self.table[p])
            else:
                rng = np.random.default_rng(abs(hash(p)) % (2**32))
                out.append(rng.normal(size=self.dim) * (1 + len(p)))
        return np.array(out)


def test_ensemble_matches_target_class_text_embeddings():
    target = _FakeTextTarget(5, templates=("a {}", "the {} photo", "{}!"))
    names = ["red", "striped cat", "fog"]
    ours = ensemble_embeddings(target.encode_text, names, target.templates, batch_concepts=2)
    assert np.allclose(ours, target.class_text_embeddings(names), atol=1e-12)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0)
    with pytest.raises(ValueError, match="no '\\{\\}'"):
        check_templates(["a photo"])


# --------------------------------------------------------------------------- the probe on a built context


def _context(case, target, labels=None) -> ProbeContext:
    from sing_audit.components import LinearHead

    a, bias, f, sub, w = case["a"], case["bias"], case["f"], case["sub"], case["w"]
    labels = np.zeros(f.shape[0], dtype=np.int64) if labels is None else labels
    return ProbeContext(
        model_name="m", target_name="fake", features=f, labels=labels,
        head=LinearHead(w, None, float(np.finfo(np.float64).eps)), subspaces=sub,
        embeddings=f @ a.T + bias, translated=f @ a.T + bias, class_text=np.eye(w.shape[0], a.shape[0]),
        class_names=["alpha", "beta", "gamma"], folds=np.zeros(f.shape[0], dtype=np.int64),
        translate=lambda changed, rows: changed @ a.T + bias, target=target, generator=np.random.default_rng(0),
    )


def test_probe_ranks_the_aligned_concept_first_with_the_predicted_as(tmp_path):
    case = _orthogonal_case(images=5)
    (tmp_path / "c.txt").write_text("red\nleaking thing\nblue\nfog\n", encoding="utf-8")
    t = case["t"]
    # the encoder maps the prompt of "leaking thing" exactly onto the aligned direction
    target = _FakeTextTarget(len(t), templates=("a {}",), table={"a leaking thing": 7.0 * t})
    probe = ConceptsProbe(ConceptsProbe.Options(sets=[{"plugin": "file", "path": "c.txt"}], top_k=3, base_dir=tmp_path))
    out = probe.run(_context(case, target))
    s = out.summary
    assert s["sets"] == [{"name": "c", "version": "unversioned", "digest": concept_digest(["red", "leaking thing", "blue", "fog"]), "size": 4}]
    assert s["embeddings"] == "text_encoder" and s["templates"] == ["a {}"] and s["n_concepts"] == 4
    top = s["per_class"]["alpha"]
    assert len(top) == 3 and set(s["per_class"]) == {"alpha"}
    assert top[0]["concept"] == "leaking thing"
    assert top[0]["as"] == pytest.approx(case["expected_as"].mean(), abs=1e-9)
    assert top[0]["angle"] == pytest.approx(case["expected_angle"].mean(), abs=1e-9)
    assert abs(top[0]["as"]) > abs(top[1]["as"]) >= abs(top[2]["as"])
    assert s["model_top"][0]["concept"] == "leaking thing"
    assert s["model_top"][0]["abs_as"] == pytest.approx(np.abs(case["expected_as"]).mean(), abs=1e-9)
    assert set(s["model_top"][0]) == {"concept", "as", "abs_as"} and set(top[0]) == {"concept", "as", "angle"}
    assert list(out.per_image["top_concept"]) == ["leaking thing"] * 5
    assert np.allclose(out.per_image["top_concept_as"], case["expected_as"])
    json.dumps(s)  # plain JSON types only
    # a second model under the same target reuses the concept embeddings
    calls = target.calls
    probe.run(_context(case, target))
    assert target.calls == calls


def test_probe_templates_default_to_the_targets_and_can_be_overridden():
    case = _orthogonal_case()
    target = _FakeTextTarget(len(case["t"]), templates=("x {}", "y {}"))
    s = ConceptsProbe(ConceptsProbe.Options(sets=["attributes"])).run(_context(case, target)).summary
    assert s["templates"] == ["x {}", "y {}"]
    assert s["sets"][0]["name"] == "attributes" and s["sets"][0]["size"] == s["n_concepts"]
    s = ConceptsProbe(ConceptsProbe.Options(sets=["attributes"], templates=["z {} z"])).run(_context(case, target)).summary
    assert s["templates"] == ["z {} z"]
    with pytest.raises(ValidationError, match="no '\\{\\}'"):
        ConceptsProbe.Options(templates=["no slot"])
    with pytest.raises(DataError, match="not a precomputed target"):
        ConceptsProbe(ConceptsProbe.Options(sets=["precomputed"])).run(_context(case, target))


def test_probe_options_are_checked_before_any_model_runs(tmp_path):
    with pytest.raises(ConfigError, match='did you mean "attributes"'):
        ConceptsProbe(ConceptsProbe.Options(sets=["atributes"]))
    with pytest.raises(ValueError, match="max_concepts"):
        ConceptsProbe(ConceptsProbe.Options(sets=["imagenet1k", "attributes"], max_concepts=1000))
    with pytest.raises(ValueError, match="listed twice"):
        ConceptsProbe(ConceptsProbe.Options(sets=["attributes", "attributes"]))
    with pytest.raises(DataError, match="concept file not found"):
        ConceptsProbe(ConceptsProbe.Options(sets=[{"plugin": "file", "path": "none.txt"}], base_dir=tmp_path))
    with pytest.raises(ConfigError, match="unknown key"):
        ConceptsProbe(ConceptsProbe.Options(sets=[{"plugin": "file", "path": "c.txt", "pth": 1}], base_dir=tmp_path))


def test_imagenet_and_attributes_share_no_column_twice():
    case = _orthogonal_case()
    target = _FakeTextTarget(len(case["t"]))
    probe = ConceptsProbe(ConceptsProbe.Options(sets=["imagenet1k", "attributes"], top_k=2, per_image=False))
    s = probe.run(_context(case, target)).summary
    sizes = [x["size"] for x in s["sets"]]
    assert sizes[0] == 1000 and s["n_concepts"] <= sum(sizes)


# --------------------------------------------------------------------------- end to end (precomputed target)


@pytest.fixture(scope="module")
def concept_target(scenario_dir, tmp_path_factory):
    """The demo's target file plus concepts: the class prompts named after the classes,
    and random distractors."""
    folder = tmp_path_factory.mktemp("concept_target")
    with np.load(scenario_dir / "clip.npz") as d:
        arrays = dict(d)
    rng = np.random.default_rng(5)
    distractors = rng.normal(size=(6, arrays["text_embeddings"].shape[1])).astype(np.float32)
    names = list(CLASS_NAMES) + [f"distractor {i}" for i in range(6)]
    np.savez(
        folder / "clip_concepts.npz",
        **arrays,
        concept_names=np.array(names, dtype=str),
        concept_embeddings=np.concatenate([arrays["text_embeddings"], distractors]).astype(np.float32),
    )
    (folder / "classes.txt").write_text("# the demo's class names\n" + "\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
    return folder


def _concept_config(tmp_path, scenario_dir, concept_target, sets, backbones=("benign", "leaky")):
    return write_config(
        tmp_path,
        {
            "output": "out",
            "target": {"plugin": "precomputed", "name": "clip", "path": str(concept_target / "clip_concepts.npz")},
            "backbones": [{"name": b, "plugin": "precomputed", "path": str(scenario_dir / f"{b}.npz")} for b in backbones],
            "probes": ["null_removal", {"plugin": "concepts", "sets": sets, "top_k": 4}],
            "report": {"formats": ["json", "csv"]},
            "run": {"bootstrap": 100},
        },
    )


@pytest.fixture(scope="module")
def concept_run(tmp_path_factory, scenario_dir, concept_target):
    folder = tmp_path_factory.mktemp("concept_run")
    sets = ["precomputed", {"plugin": "file", "path": str(concept_target / "classes.txt"), "name": "demo classes"}]
    cfg = _concept_config(folder, scenario_dir, concept_target, sets)
    code = main(["run", str(cfg)])
    return code, folder / "out", cfg


def test_planted_class_leaks_toward_its_own_concept(concept_run):
    code, out, _ = concept_run
    assert code == 1  # the demo's planted classes fail the policy as usual
    res = json.loads((out / "results.json").read_text())
    by = {m["name"]: m["probes"]["concepts"] for m in res["models"]}
    for name in PLANTED:
        top = by["leaky"]["per_class"][name][0]
        assert top["concept"] == name
        assert top["as"] < -12  # the planted signal: ≈ −18°, removing it moves away from the class
        assert 15 < top["angle"] < 40
        assert abs(by["benign"]["per_class"][name][0]["as"]) < 3
    assert {x["concept"] for x in by["leaky"]["model_top"][:2]} == set(PLANTED)
    # an unplanted class shows no strong concept
    assert all(abs(x["as"]) < 3 for x in by["leaky"]["per_class"]["tench"])


def test_sets_are_recorded_with_version_and_digest(concept_run):
    _, out, _ = concept_run
    res = json.loads((out / "results.json").read_text())
    sets = res["models"][0]["probes"]["concepts"]["sets"]
    assert [s["name"] for s in sets] == ["precomputed", "demo classes"]
    assert sets[0]["size"] == 16 and sets[1]["size"] == 10
    assert sets[1]["digest"] == concept_digest(list(CLASS_NAMES)) and sets[1]["version"] == "unversioned"
    assert sets[0]["version"].startswith("sha256:")  # the target file's digest
    assert res["models"][0]["probes"]["concepts"]["embeddings"] == "precomputed"
    assert res["models"][0]["probes"]["concepts"]["n_concepts"] == 16  # the class names are shared
    csv_path = out / res["models"][1]["files"]["images_csv"]
    header = csv_path.read_text().splitlines()[0].split(",")
    assert "concepts.top_concept" in header and "concepts.top_concept_as" in header


def test_precomputed_target_cannot_embed_the_attributes(concept_run, scenario_dir, concept_target, capsys):
    _, out, _ = concept_run
    # the same audit (same output, cached translators) asked for a set that needs new text
    cfg = _concept_config(out.parent, scenario_dir, concept_target, ["attributes"])
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "precomputed target" in err and "no text encoder" in err and "'attributes'" in err
    assert "sets: [precomputed]" in err


def test_precomputed_set_needs_concepts_in_the_file(tmp_path, scenario_dir, capsys):
    cfg = write_config(
        tmp_path,
        {
            "output": "out",
            "target": {"plugin": "precomputed", "name": "clip", "path": str(scenario_dir / "clip.npz")},
            "backbones": [{"name": "leaky", "plugin": "precomputed", "path": str(scenario_dir / "leaky.npz")}],
            "probes": ["null_removal", {"plugin": "concepts", "sets": ["precomputed"]}],
            "run": {"bootstrap": 100},
            "report": {"formats": ["json"]},
        },
    )
    assert main(["run", str(cfg)]) == 2
    assert "carries no concept_names" in capsys.readouterr().err


def test_validate_reports_a_bad_concept_file(tmp_path, scenario_dir, concept_target, capsys):
    (tmp_path / "bad.txt").write_text("red\nred\n", encoding="utf-8")
    cfg = _concept_config(tmp_path, scenario_dir, concept_target, [{"plugin": "file", "path": "bad.txt"}])
    assert main(["validate", str(cfg)]) == 2
    assert "bad.txt, line 2: duplicate concept 'red'" in capsys.readouterr().err


# --------------------------------------------------------------------------- text encoder (tiny open_clip)


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip_target(tmp_path_factory):
    import open_clip

    from sing_audit_open_clip.target import OpenClipTarget

    path = tmp_path_factory.mktemp("clipcfg") / "sing-concepts-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(path)
    return OpenClipTarget(OpenClipTarget.Options(model="sing-concepts-tiny-clip", weights="random", templates=["a photo of a {}", "an image of a {}"]))


def test_open_clip_text_encoder_path(tiny_clip_target, tmp_path):
    import torch

    torch.manual_seed(0)
    target = tiny_clip_target  # not loaded: as on a cached rerun, the probe loads it itself
    case = _orthogonal_case(seed=1)
    rng = np.random.default_rng(0)
    n = TINY_CLIP["embed_dim"]
    a = rng.normal(size=(n, case["a"].shape[1]))
    case = dict(case, a=a, bias=rng.normal(size=n))
    (tmp_path / "c.yaml").write_text("concepts: [red car, striped cat, foggy street]\nversion: t1\n", encoding="utf-8")
    probe = ConceptsProbe(ConceptsProbe.Options(sets=["attributes", {"plugin": "file", "path": "c.yaml"}], top_k=5, base_dir=tmp_path))
    s = probe.run(_context(case, target)).summary
    assert s["embeddings"] == "text_encoder"
    assert s["templates"] == ["a photo of a {}", "an image of a {}"]
    assert [x["name"] for x in s["sets"]] == ["attributes", "c"] and s["sets"][1]["version"] == "t1"
    assert s["n_concepts"] == s["sets"][0]["size"] + 3
    assert len(s["per_class"]["alpha"]) == 5 and len(s["model_top"]) == 5
    assert all(0 <= x["angle"] <= 180 and np.isfinite(x["as"]) for x in s["per_class"]["alpha"])
    # the concept embeddings are the target's own template ensembles
    emb = probe._text_cache[next(iter(probe._text_cache))]
    assert np.allclose(emb[-3:], target.class_text_embeddings(["red car", "striped cat", "foggy street"]), atol=1e-6)


def test_a_concept_set_registered_by_a_third_party_plugin_is_found(synthetic_config):
    """The concepts probe looks sets up in the run's registry (its build context), not in
    a registry of its own, so a set registered in-process or by a third party is found."""
    import types

    from sing_audit import hookimpl
    from sing_audit.config import load_config
    from sing_audit.host import create_plugin_manager
    from sing_audit.pipeline import build_plan

    class Words:
        """A third party's concept set."""

        def concepts(self):
            return ["plaid", "striped"]

    plugin = types.ModuleType("third_party_words")

    @hookimpl
    def register_concept_sets(register):
        register("my_words", Words)

    plugin.register_concept_sets = register_concept_sets
    pm = create_plugin_manager()
    pm.register(plugin, name="third_party_words")
    registry = create_registry(pm)
    cfg = load_config(synthetic_config(probes=["null_removal", {"plugin": "concepts", "sets": ["my_words"]}]))
    plan = build_plan(cfg, registry, "audit.yaml")
    (probe,) = [p.instance for p in plan.probes if p.plugin == "concepts"]
    assert [s.concepts() for s in probe.sets] == [["plaid", "striped"]]
    with pytest.raises(ConfigError, match=r"unknown concept set plugin 'my_wordz' at audit.yaml: probes\[1\].sets\[0\].plugin \(did you mean \"my_words\"\?\)"):
        build_plan(load_config(synthetic_config(probes=["null_removal", {"plugin": "concepts", "sets": ["my_wordz"]}])),
                   registry, "audit.yaml")
