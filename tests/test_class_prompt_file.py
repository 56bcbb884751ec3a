"""Class prompt embeddings from a file (``class_prompt_embeddings``) for the image targets:
rows matched to the audit's classes by name or head index, never by position; the model's
text encoder is not asked; results and report say where the prompts came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sing_audit.authors_files import read_class_prompt_embeddings
from sing_audit.cli import main
from sing_audit.components import Target
from sing_audit.errors import DataError
from sing_audit.options import TextTargetOptions
from sing_audit.pipeline.text import TextEncoder

CLASSES = ["tench", "goldfish", "great white shark"]


def _vectors(k: int, n: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(k, n))


def test_rows_are_matched_by_name_not_position(tmp_path):
    vec = _vectors(4)
    # the file lists the classes in another order, with different case and spacing, plus one more
    names = np.array(["Great  White Shark", "zebra", "tench", "goldfish"], dtype=object)
    path = tmp_path / "p.npz"
    np.savez(path, classes=names, embeddings=vec)  # object array: read without pickle
    emb, info = read_class_prompt_embeddings(path, CLASSES)
    np.testing.assert_array_equal(emb, vec[[2, 3, 0]])
    assert info["source"] == "file" and info["matched_by"] == "name" and info["rows"] == 4 and info["unused"] == 1
    assert info["sha256"].startswith("sha256:")


def test_rows_keyed_by_head_index_and_safetensors(tmp_path):
    from safetensors.numpy import save_file

    vec = _vectors(3).astype(np.float32)
    path = tmp_path / "p.safetensors"
    save_file({"2": vec[0], "tench": vec[1], "1": vec[2]}, str(path))
    emb, info = read_class_prompt_embeddings(path, CLASSES)
    np.testing.assert_array_equal(emb, vec[[1, 2, 0]].astype(np.float64))
    assert info["matched_by"] == "name and index"
    # the precomputed target's layout: an embeddings tensor, names in the header metadata
    save_file({"embeddings": vec[::-1].copy()}, str(path), metadata={"class_names": json.dumps(CLASSES[::-1])})
    emb, _ = read_class_prompt_embeddings(path, CLASSES)
    np.testing.assert_array_equal(emb, vec.astype(np.float64))


@pytest.mark.parametrize(
    "keys,classes,needle",
    [
        (["tench", "goldfish"], CLASSES, "no embedding for 1 of 3 classes, e.g. 2 'great white shark'"),
        (["tench", "TENCH", "goldfish"], CLASSES, "appears twice"),
        (["tench", "0", "goldfish", "great white shark"], CLASSES, "matches two rows"),
        (["a", "b", "c"], ["dup", "dup", "x"], "not unique: key it by index"),
    ],
)
def test_unmatched_or_ambiguous_rows_are_data_errors(tmp_path, keys, classes, needle):
    path = tmp_path / "p.npz"
    np.savez(path, names=np.array(keys), embeddings=_vectors(len(keys)))
    with pytest.raises(DataError, match=needle):
        read_class_prompt_embeddings(path, classes)


def test_duplicate_class_names_match_by_index(tmp_path):
    path = tmp_path / "p.npz"
    vec = _vectors(3)
    np.savez(path, names=np.array(["1", "0", "x"]), embeddings=vec)
    emb, info = read_class_prompt_embeddings(path, ["dup", "dup", "x"])
    np.testing.assert_array_equal(emb, vec[[1, 0, 2]])


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_class_prompt_embeddings(tmp_path / "none.npz", CLASSES)
    (tmp_path / "p.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=".npz or .safetensors"):
        read_class_prompt_embeddings(tmp_path / "p.txt", CLASSES)
    path = tmp_path / "p.npz"
    vec = _vectors(3)
    vec[1] = 0
    np.savez(path, names=np.array(CLASSES), embeddings=vec)
    with pytest.raises(DataError, match="'goldfish' is zero"):
        read_class_prompt_embeddings(path, CLASSES)


class _Encoderless(Target):
    def __init__(self, path):
        self.class_prompts = path

    def describe(self):
        return {"plugin": "fake"}

    def encode_text(self, prompts):
        raise AssertionError("the text encoder was asked although the prompts come from a file")


def test_text_encoder_reads_the_file_and_records_it(tmp_path):
    path = tmp_path / "p.npz"
    vec = _vectors(3) * np.array([[2.0], [0.5], [7.0]])
    np.savez(path, names=np.array(CLASSES[::-1]), embeddings=vec[::-1])
    # no store, clock or loader: none is needed when nothing is encoded
    text = TextEncoder(None, None, None, _Encoderless(path), {"plugin": "fake"}, "t")
    out = text.class_text(CLASSES)
    np.testing.assert_allclose(out, vec / np.linalg.norm(vec, axis=1, keepdims=True), rtol=1e-15)
    assert text.class_prompts["file"] == str(path) and text.class_prompts["matched_by"] == "name"


def test_option_resolves_against_the_config_folder(tmp_path):
    o = TextTargetOptions(model="m", class_prompt_embeddings="p.npz", base_dir=tmp_path)
    assert o.class_prompts_path() == tmp_path / "p.npz"
    assert TextTargetOptions(model="m").class_prompts_path() is None


# --------------------------------------------------------------------------- a run with an image target


@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    from .test_image_audit import TINY_CLIP

    path = tmp_path_factory.mktemp("clipcfg") / "sing-prompts-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(path)
    return "sing-prompts-tiny-clip"


def _image_run(tmp_path: Path, clip: str, prompts: str | None):
    from sing_audit.testing import image_folder_audit

    r18 = {"name": "r18", "plugin": "timm", "model": "resnet18", "weights": "random", "img_size": 32}
    target = {"plugin": "open_clip", "name": "clip", "model": clip, "weights": "random", "image_size": 32}
    if prompts:
        target["class_prompt_embeddings"] = prompts
    return image_folder_audit(tmp_path, [r18], target=target, report={"formats": ["json", "html"]})


def test_an_open_clip_audit_uses_the_file_and_says_so(tmp_path, tiny_clip_name, monkeypatch):
    from sing_audit_open_clip.target import OpenClipTarget

    # the head has 1000 classes: three keyed by name (in another order), the rest by head index
    keys = ["not an imagenet class", *CLASSES[::-1], *(str(i) for i in range(3, 1000))]
    np.savez(tmp_path / "prompts.npz", classes=np.array(keys, dtype=object), embeddings=_vectors(len(keys), 64))
    monkeypatch.setattr(OpenClipTarget, "encode_text", _Encoderless.encode_text)
    cfg = _image_run(tmp_path, tiny_clip_name, "prompts.npz")
    assert main(["-q", "run", str(cfg)]) in (0, 1)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    cp = res["models"][0]["class_prompts"]
    assert cp["source"] == "file" and cp["file"] == str(tmp_path / "prompts.npz") and cp["unused"] == 1
    assert cp["matched_by"] == "name and index" and cp["rows"] == 1001
    html = (tmp_path / "out" / "report.html").read_text()
    assert "prompts.npz" in html and cp["sha256"] in html


def test_an_open_clip_audit_refuses_a_file_of_another_dimension(tmp_path, tiny_clip_name, capsys):
    np.savez(tmp_path / "prompts.npz", classes=np.array([str(i) for i in range(1000)]), embeddings=_vectors(1000, 768))
    cfg = _image_run(tmp_path, tiny_clip_name, "prompts.npz")
    assert main(["-q", "run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "prompts.npz" in err and "768 dimensions, image embeddings 64" in err


def test_the_open_clip_target_takes_the_option(tmp_path):
    from sing_audit_open_clip.target import OpenClipTarget

    t = OpenClipTarget({"model": "ViT-B-32", "weights": "random", "class_prompt_embeddings": "prompts.npz",
                        "base_dir": str(tmp_path)})
    assert t.class_prompts == tmp_path / "prompts.npz"
    assert OpenClipTarget({"model": "ViT-B-32", "weights": "random"}).class_prompts is None
