"""Reading the SING authors' embedding files without pickle (sing_audit.authors_files) and
using them as a concept set (``embedding_file``)."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from sing_audit.authors_files import read_embedding_table, read_npz
from sing_audit.builtins.concept_sets import EmbeddingFileConcepts
from sing_audit.builtins.concepts_probe import ConceptsProbe
from sing_audit.concepts import concept_digest
from sing_audit.errors import DataError
from sing_audit.host import create_registry

from .test_concepts import _context, _FakeTextTarget, _orthogonal_case

AUTHORS = Path("/work/shared/reference/sing-authors/misc/embeddings/attribute_embeddings_broden_style_fp16.npz")
needs_authors_file = pytest.mark.skipif(not AUTHORS.is_file(), reason="the SING authors' attribute file is not here")


@needs_authors_file
def test_the_authors_attribute_file_reads_without_pickle():
    with pytest.raises(ValueError, match="allow_pickle"):  # what numpy does without pickle
        np.load(AUTHORS, allow_pickle=False)["classes"]
    arrays = read_npz(AUTHORS)
    assert set(arrays) == {"classes", "prompts", "embeddings"}
    assert arrays["classes"].dtype.kind == "U" and arrays["classes"].shape == (173,)
    assert arrays["classes"][:3].tolist() == ["black", "blue", "brown"]
    assert arrays["prompts"].tolist() == ["prompt1", "prompt2", "prompt3", "prompt4", "prompt5", "mean"]
    emb = arrays["embeddings"]
    assert emb.dtype == np.float16 and emb.shape == (173, 6, 768)
    # the same bytes numpy reads for the numeric member
    np.testing.assert_array_equal(emb, np.load(AUTHORS, allow_pickle=False)["embeddings"])
    names, vec, info = read_embedding_table(AUTHORS)
    assert names == arrays["classes"].tolist() and vec.shape == (173, 768)
    assert info["column"] == "mean" and info["sha256"].startswith("sha256:") and len(info["sha256"]) == 71
    # 'mean' is the mean of the five unit prompts (float16 rounding: ~5e-4 per entry), not unit
    prompts = emb[:, :5].astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(prompts, axis=-1), 1.0, atol=2e-3)
    np.testing.assert_allclose(vec, prompts.mean(axis=1), atol=1e-3)
    assert np.linalg.norm(vec, axis=1).max() < 0.99
    _, first, info1 = read_embedding_table(AUTHORS, column="prompt1")
    np.testing.assert_array_equal(first, emb[:, 0].astype(np.float64))
    with pytest.raises(DataError, match="prompt1, prompt2"):
        read_embedding_table(AUTHORS, column="prompt9")


@needs_authors_file
def test_the_authors_file_is_a_concept_set():
    reg = create_registry()
    assert reg.get("concept_set", "embedding_file").factory is EmbeddingFileConcepts
    s = EmbeddingFileConcepts(EmbeddingFileConcepts.Options(path=AUTHORS))
    assert len(s.concepts()) == 173 and s.embeddings().shape == (173, 768)
    d = s.describe()
    assert d["name"] == AUTHORS.stem and d["embeddings"] == "file" and d["column"] == "mean"
    assert d["sha256"] == s.version and d["digest"] == concept_digest(s.concepts())


# --------------------------------------------------------------------------- hostile files


class _Evil:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path, how: str):
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        if self.how == "eval":
            import builtins

            return (builtins.eval, (f"open({str(self.marker)!r}, 'w').write('ran')",))
        return (_write_marker, (str(self.marker),))  # a function of this module


def _write_marker(path: str) -> None:
    Path(path).write_text("ran", encoding="utf-8")


def _npz_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(f"{name}.npy", data)
    return path


def _object_npy(payload) -> bytes:
    """An object-dtype ``.npy`` member whose pickle is ``payload`` (as numpy would write it)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    pickle.dump(payload, buf, protocol=3)
    return buf.getvalue()


@pytest.mark.parametrize("how", ["system", "eval", "module"])
@pytest.mark.parametrize("wrapped", [True, False], ids=["in_an_object_array", "bare"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, how, wrapped):
    marker = tmp_path / "pwned"
    evil = _Evil(marker, how)
    payload = np.array([evil, "x"], dtype=object) if wrapped else evil
    # the hostile file also has a harmless numeric member, as a real embedding file would
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros((2, 3), dtype=np.float32))
    path = _npz_with(tmp_path / "hostile.npz", {"embeddings": buf.getvalue(), "classes": _object_npy(payload)})
    with pytest.raises(DataError, match="refused global") as err:
        read_npz(path)
    assert "classes" in str(err.value)
    assert not marker.exists()
    with pytest.raises(DataError, match="refused global"):
        EmbeddingFileConcepts(EmbeddingFileConcepts.Options(path=path)).concepts()
    assert not marker.exists()
    # control: numpy itself, allowed to unpickle, does run it (so the payload is real)
    if how != "module":
        np.load(path, allow_pickle=True)["classes"]
        assert marker.exists()


def test_object_arrays_of_anything_but_strings_are_refused(tmp_path):
    for bad, needle in (([1, "a"], "int, not a string"), ([["a"], "b"], "list, not a string"), ({"a": 1}, "not an object array")):
        payload = np.array(bad, dtype=object) if isinstance(bad, list) else bad
        if isinstance(bad, list) and isinstance(bad[0], list):
            payload = np.empty(2, dtype=object)
            payload[0], payload[1] = ["a"], "b"
        path = _npz_with(tmp_path / "bad.npz", {"classes": _object_npy(payload)})
        with pytest.raises(DataError, match=needle):
            read_npz(path)


def test_plain_files_and_errors(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, names=np.array(["red", "blue"]), embeddings=np.eye(2, 4))
    names, vec, info = read_embedding_table(path)
    assert names == ["red", "blue"] and vec.shape == (2, 4) and info["column"] is None
    with pytest.raises(DataError, match="no columns"):
        read_embedding_table(path, column="mean")
    np.savez(path, names=np.array(["red", "blue", "fog"]), embeddings=np.eye(2, 4))
    with pytest.raises(DataError, match="3 names but 2 rows"):
        read_embedding_table(path)
    np.savez(path, words=np.array(["red"]), embeddings=np.eye(1, 4))
    with pytest.raises(DataError, match="needs names"):
        read_embedding_table(path)
    (tmp_path / "not.npz").write_text("hello", encoding="utf-8")
    with pytest.raises(DataError, match="not an .npz"):
        read_npz(tmp_path / "not.npz")
    with pytest.raises(DataError, match="not found"):
        read_npz(tmp_path / "missing.npz")
    np.savez(path, names=np.array(["red", "Red"]), embeddings=np.eye(2, 4))
    with pytest.raises(DataError, match="duplicate concept"):
        EmbeddingFileConcepts(EmbeddingFileConcepts.Options(path=path)).concepts()


# --------------------------------------------------------------------------- the probe uses the file's vectors


def _names_file(tmp_path, names, vectors) -> Path:
    """An npz with object-array names, like the authors' (numpy writes it with pickle)."""
    path = tmp_path / "own.npz"
    np.savez(path, classes=np.array(names, dtype=object), embeddings=np.asarray(vectors))
    return path


def test_the_probe_scores_the_files_vectors_without_the_encoder(tmp_path):
    case = _orthogonal_case(images=5)
    t, rng = case["t"], np.random.default_rng(7)
    names = ["red", "leaking thing", "blue", "fog"]
    vectors = rng.normal(size=(4, len(t)))
    vectors[1] = 7.0 * t  # the file (not the encoder) puts 'leaking thing' on the aligned direction
    path = _names_file(tmp_path, names, vectors)
    target = _FakeTextTarget(len(t), templates=("a {}",))
    probe = ConceptsProbe(ConceptsProbe.Options(sets=[{"plugin": "embedding_file", "path": "own.npz"}], top_k=2,
                                                base_dir=tmp_path))
    s = probe.run(_context(case, target)).summary
    assert target.calls == 0 and s["embeddings"] == "file" and s["templates"] is None
    assert s["sets"][0]["sha256"].startswith("sha256:") and s["sets"][0]["file"] == str(path)
    top = s["per_class"]["alpha"][0]
    assert top["concept"] == "leaking thing"
    assert top["as"] == pytest.approx(case["expected_as"].mean(), abs=1e-9)
    # mixed with a set the encoder embeds: only that set's concepts are encoded
    (tmp_path / "more.txt").write_text("sky\nleaking thing\n", encoding="utf-8")
    mixed = ConceptsProbe(ConceptsProbe.Options(
        sets=[{"plugin": "embedding_file", "path": "own.npz"}, {"plugin": "file", "path": "more.txt"}], base_dir=tmp_path))
    ms = mixed.run(_context(case, target)).summary
    assert ms["embeddings"] == "text_encoder+file" and ms["n_concepts"] == 5 and target.calls == 1
    # 'leaking thing' is in both sets: the first (the file) keeps it, with the file's vector
    assert ms["per_class"]["alpha"][0]["as"] == pytest.approx(case["expected_as"].mean(), abs=1e-9)


def test_the_probe_refuses_vectors_of_another_dimension(tmp_path):
    case = _orthogonal_case()
    _names_file(tmp_path, ["red", "blue"], np.ones((2, len(case["t"]) + 1)))
    probe = ConceptsProbe(ConceptsProbe.Options(sets=[{"plugin": "embedding_file", "path": "own.npz"}], base_dir=tmp_path))
    with pytest.raises(DataError, match=r"own\.npz.*embeds in 8 dimensions"):
        probe.run(_context(case, _FakeTextTarget(len(case["t"]))))


# --------------------------------------------------------------------------- the SING authors' dictionary ranking


def test_authors_dcos_is_the_change_of_cosine_and_opposite_in_sign_to_as():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from sing_audit.concepts import ConceptAccumulator
    from sing_audit.scores import angle_matrix, unit_rows

    @settings(max_examples=30, deadline=None, database=None)
    @given(seed=st.integers(0, 2**32 - 1))
    def check(seed):
        rng = np.random.default_rng(seed)
        n, d, k, c = 23, 5, 7, 3
        t_f, t_r, concepts = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(k, d))
        labels = rng.integers(0, c, size=n)
        acc = ConceptAccumulator(concepts, c)
        as_ = acc.add(t_f, t_r, labels)
        res = acc.result()
        dcos = unit_rows(t_f) @ unit_rows(concepts).T - unit_rows(t_r) @ unit_rows(concepts).T
        for ci in range(c):
            sel = labels == ci
            if sel.any():
                np.testing.assert_allclose(res.dcos_mean[ci], dcos[sel].mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(res.model_abs_dcos_mean, np.abs(dcos).mean(axis=0), atol=1e-12)
        # per image, AS > 0 exactly when dcos < 0 (cos decreases on [0°, 180°]); pairs whose
        # angles agree to rounding (|AS| < 1e-9°) carry no sign
        clear = np.abs(as_) > 1e-9
        assert np.all(np.sign(as_[clear]) == -np.sign(dcos[clear]))
        np.testing.assert_allclose(as_, angle_matrix(t_f, concepts) - angle_matrix(t_r, concepts))

    check()


def test_the_probe_reports_the_authors_ranking_beside_ours(tmp_path):
    case = _orthogonal_case(images=5)
    t = case["t"]
    names = ["red", "leaking thing", "blue"]
    vectors = np.random.default_rng(3).normal(size=(3, len(t)))
    vectors[1] = t
    _names_file(tmp_path, names, vectors)
    probe = ConceptsProbe(ConceptsProbe.Options(sets=[{"plugin": "embedding_file", "path": "own.npz"}], base_dir=tmp_path))
    s = probe.run(_context(case, _FakeTextTarget(len(t)))).summary
    top = s["authors_per_class"]["alpha"][0]
    # closed form: angle(T(f̃), t) = 90°, so dcos = cos(angle(T(f), t)) − 0
    assert top["concept"] == "leaking thing"
    assert top["dcos"] == pytest.approx(np.cos(np.radians(case["expected_angle"])).mean(), abs=1e-12)
    assert top["dcos"] > 0 and s["per_class"]["alpha"][0]["as"] < 0  # opposite signs
    assert s["authors_model_top"][0]["concept"] == "leaking thing"
    assert s["authors_model_top"][0]["abs_dcos"] == pytest.approx(top["dcos"], abs=1e-12)


def test_a_demo_audit_with_the_embedding_file_shows_both_rankings(tmp_path):
    import json

    import yaml

    from sing_audit.cli import main

    from .conftest import DEMO, demo_config

    with np.load(DEMO / "data" / "clip.npz", allow_pickle=False) as z:
        dim = z["image_embeddings"].shape[1]
    _names_file(tmp_path, ["red", "striped", "metal", "fur"], np.random.default_rng(0).normal(size=(4, dim)))
    path = demo_config(tmp_path, {"formats": ["json", "html"]})
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg["probes"] = ["null_removal", {"plugin": "concepts", "sets": [{"plugin": "embedding_file", "path": str(tmp_path / "own.npz")}]}]
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    main(["-q", "run", str(path)])
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    concepts = res["models"][0]["probes"]["concepts"]
    assert concepts["embeddings"] == "file" and concepts["sets"][0]["sha256"].startswith("sha256:")
    assert concepts["authors_model_top"] and concepts["authors_per_class"]
    html = (tmp_path / "run" / "report.html").read_text()
    assert "the SING authors&#39; ranking" in html or "the SING authors' ranking" in html
