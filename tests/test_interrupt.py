"""Ctrl-C: the log and the terminal name the interrupted stage, the terminal
says how to resume, and chunked stages (extraction, text encoding) keep finished chunks."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sing_audit.cli import main
from sing_audit.components import ImageTarget
from sing_audit.config import load_config
from sing_audit.pipeline.cache import ArrayStore
from sing_audit.pipeline.devices import ModelLoader
from sing_audit.pipeline.stages import StageClock
from sing_audit.pipeline.text import TextEncoder

from .conftest import PIPELINE_POLICY, image_folder_audit, write_config

# --------------------------------------------------------------------------- helpers


class FakeTextTarget(ImageTarget):
    """A text encoder with a deterministic embedding per prompt; ``interrupt_at``: the
    1-based call of ``encode_text`` that raises KeyboardInterrupt (as Ctrl-C would)."""

    templates = ("a photo of a {}", "a {} in the wild", "art of the {}")

    def __init__(self, dim: int = 12, interrupt_at: int | None = None):
        self.dim = dim
        self.interrupt_at = interrupt_at
        self.calls: list[list[str]] = []
        self.loads = 0

    def describe(self):
        return {"plugin": "fake-text", "dim": self.dim, "templates": list(self.templates)}

    def load(self, device):
        self.loads += 1

    def transform(self):  # pragma: no cover - no images here
        raise NotImplementedError

    def encode_images(self, images):  # pragma: no cover
        raise NotImplementedError

    def encode_text(self, prompts):
        self.calls.append(list(prompts))
        if self.interrupt_at is not None and len(self.calls) >= self.interrupt_at:
            raise KeyboardInterrupt
        rows = []
        for p in prompts:
            seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).normal(size=self.dim) * (1 + len(p) % 5))
        return np.array(rows, dtype=np.float64).reshape(len(prompts), self.dim)


class _Run:
    """The text stage's services in the synthetic audit's output folder."""

    def __init__(self, synthetic_config):
        cfg = load_config(synthetic_config())
        self.out = cfg.output_dir
        self.clock = StageClock()
        self.store = ArrayStore(self.out / "cache")
        self.loader = ModelLoader(cfg.run.device)

    def text(self, target) -> TextEncoder:
        return TextEncoder(self.store, self.clock, self.loader, target, target.describe(), "fake")


def _chunks(out: Path) -> list[Path]:
    from sing_audit.pipeline.text import CHUNK_KIND

    folder = out / "cache" / CHUNK_KIND
    # committed entries only: a chunk being written lives in a hidden temporary folder
    return sorted(p for p in folder.glob("*/meta.json") if not p.parent.name.startswith(".")) if folder.is_dir() else []


# --------------------------------------------------------------------------- stages


def test_stage_log_says_finished_interrupted_or_failed(synthetic_config, caplog):
    from sing_audit.pipeline.stages import stage_exit

    run = _Run(synthetic_config)
    caplog.set_level(logging.INFO, logger="sing_audit")
    with run.clock.stage("dataset"):
        pass
    with pytest.raises(KeyboardInterrupt) as interrupted:
        with run.clock.stage("text"):
            raise KeyboardInterrupt
    with pytest.raises(ValueError) as failed:
        with run.clock.stage("translator"):
            raise ValueError("bad")
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("stage dataset: ") and line.endswith("s") and "after" not in line for line in lines)
    assert any(line.startswith("stage text: interrupted after ") for line in lines), lines
    assert any(line.startswith("stage translator: failed after ") and line.endswith("s (ValueError)") for line in lines), lines
    # an unfinished stage is not counted as if it had finished
    assert set(run.clock.seconds) == {"dataset"}
    assert stage_exit(interrupted.value).name == "text"
    assert stage_exit(failed.value).name == "translator"


def test_nested_stages_name_the_innermost(synthetic_config, caplog):
    from sing_audit.pipeline.stages import stage_exit

    run = _Run(synthetic_config)
    caplog.set_level(logging.INFO, logger="sing_audit")
    with pytest.raises(KeyboardInterrupt) as info:
        with run.clock.stage("probes"):
            with run.clock.stage("text"):
                raise KeyboardInterrupt
    where = stage_exit(info.value)
    assert where.name == "text" and where.outer == ("probes",)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("stage probes: interrupted after ") for line in lines)


# --------------------------------------------------------------------------- chunked text


def test_chunked_class_text_equals_the_target_ensemble(synthetic_config):
    from sing_audit.pipeline.text import TEXT_CHUNK_PROMPTS

    run = _Run(synthetic_config)
    target = FakeTextTarget()
    names = [f"class {i}" for i in range(301)]
    got = run.text(target).class_text(names)
    expected = FakeTextTarget().class_text_embeddings(names)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert got.shape == (301, target.dim)
    assert len(target.calls) > 1 and all(len(c) <= TEXT_CHUNK_PROMPTS for c in target.calls)
    assert sum(len(c) for c in target.calls) == 301 * 3
    # the ensemble is stored; its chunks were resume state only
    assert _chunks(run.out) == []
    again = FakeTextTarget()
    np.testing.assert_array_equal(_Run(synthetic_config).text(again).class_text(names), got)
    assert again.calls == [] and again.loads == 0


@pytest.mark.parametrize("n_templates,chunk", [(3, 7), (5, 4), (1, 256)])
def test_chunks_of_distinct_prompts_give_the_same_ensemble(tmp_path, n_templates, chunk):
    from contextlib import nullcontext

    from sing_audit.pipeline.text import ChunkedText

    target = FakeTextTarget()
    target.templates = tuple(f"{{}} number {k}" for k in range(n_templates))
    names = [f"class {i}" for i in range(23)]
    chunked = ChunkedText(ArrayStore(tmp_path), target.describe(), target.encode_text, nullcontext, "fake", chunk)
    got = chunked.class_ensemble(names, target.templates)
    np.testing.assert_allclose(got, target.class_text_embeddings(names), rtol=0, atol=1e-12)
    # every prompt once, in chunks of at most `chunk`, shortest first across the chunks
    chunks = chunked.class_chunks(names, target.templates)
    flat = [p for c in chunks for p in c]
    assert all(len(c) <= chunk for c in chunks) and sorted(flat) == sorted(t.format(n) for n in names for t in target.templates)
    assert [len(p) for p in flat] == sorted(len(p) for p in flat)


def test_identical_prompts_are_encoded_once(tmp_path):
    """Two classes of one name (ImageNet's two "crane"s) and a repeated template: each
    distinct prompt reaches the encoder once, and the ensemble is the unchunked one's."""
    from contextlib import nullcontext

    from sing_audit.pipeline.text import ChunkedText

    target = FakeTextTarget()
    target.templates = ("a photo of a {}", "art of the {}", "a photo of a {}")
    names = ["crane", "tench", "crane", "goldfish", "crane"]
    chunked = ChunkedText(ArrayStore(tmp_path), target.describe(), target.encode_text, nullcontext, "fake", 2)
    got = chunked.class_ensemble(names, target.templates)
    encoded = [p for call in target.calls for p in call]
    assert len(encoded) == len(set(encoded)) == 3 * 2  # 3 distinct names x 2 distinct templates
    np.testing.assert_allclose(got, FakeTextTarget.class_text_embeddings(target, names), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got[0], got[2])

    target.calls.clear()
    prompts = ["concept b", "concept a", "concept b", "a much longer concept", "concept a"]
    raw = ChunkedText(ArrayStore(tmp_path / "other"), target.describe(), target.encode_text, nullcontext, "fake", 2).encode(prompts)
    assert sorted(p for call in target.calls for p in call) == sorted(set(prompts))
    np.testing.assert_array_equal(raw, FakeTextTarget().encode_text(prompts))  # every row in the input order


def test_interrupted_class_text_keeps_finished_chunks(synthetic_config, caplog):
    from sing_audit.pipeline.stages import stage_exit
    from sing_audit.pipeline.text import TEXT_CHUNK_PROMPTS

    names = [f"class {i}" for i in range(400)]
    first = FakeTextTarget(interrupt_at=3)
    with pytest.raises(KeyboardInterrupt) as info:
        _Run(synthetic_config).text(first).class_text(names)
    assert stage_exit(info.value).name == "text"
    run = _Run(synthetic_config)
    assert len(_chunks(run.out)) == 2  # the two chunks before the interrupt

    caplog.set_level(logging.INFO, logger="sing_audit")
    resumed = FakeTextTarget()
    got = run.text(resumed).class_text(names)
    n_chunks = math.ceil(len(names) * len(FakeTextTarget.templates) / TEXT_CHUNK_PROMPTS)
    assert n_chunks >= 4
    assert f"text: 2 of {n_chunks} prompt chunks from cache" in caplog.text
    # only the chunks not finished before the interrupt are encoded again
    assert len(resumed.calls) == n_chunks - 2 and resumed.calls[0] == first.calls[2]
    np.testing.assert_allclose(got, FakeTextTarget().class_text_embeddings(names), rtol=0, atol=1e-12)
    assert _chunks(run.out) == []


def test_text_encoder_is_chunked_and_resumable(synthetic_config, caplog):
    from sing_audit.pipeline.text import TEXT_CHUNK_PROMPTS

    prompts = [f"concept {i}" for i in range(2 * TEXT_CHUNK_PROMPTS + 17)]
    first = FakeTextTarget(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        _Run(synthetic_config).text(first).encode(prompts)
    run = _Run(synthetic_config)
    assert len(_chunks(run.out)) == 1

    caplog.set_level(logging.INFO, logger="sing_audit")
    resumed = FakeTextTarget()
    got = run.text(resumed).encode(prompts)
    assert "text: 1 of 3 prompt chunks from cache" in caplog.text
    assert [len(c) for c in resumed.calls] == [TEXT_CHUNK_PROMPTS, 17]
    np.testing.assert_array_equal(got, FakeTextTarget().encode_text(prompts))
    # concept prompts keep their chunks: they are the cache of ctx.encode_text
    cached = FakeTextTarget()
    np.testing.assert_array_equal(_Run(synthetic_config).text(cached).encode(prompts), got)
    assert cached.calls == [] and cached.loads == 0


def test_a_target_that_overrides_class_text_embeddings_keeps_its_own(synthetic_config):
    class Own(FakeTextTarget):
        def class_text_embeddings(self, class_names):
            return np.tile(np.eye(self.dim)[0], (len(class_names), 1))

    target = Own()
    got = _Run(synthetic_config).text(target).class_text(["a", "b"])
    np.testing.assert_array_equal(got, np.tile(np.eye(target.dim)[0], (2, 1)))
    assert target.calls == []


# --------------------------------------------------------------------------- terminal


def test_ctrl_c_in_a_stage_names_it_the_cache_and_the_resume_command(synthetic_config, monkeypatch, capsys):
    from sing_audit.pipeline import model

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "fit_family", interrupted)
    cfg = synthetic_config()
    out = load_config(cfg).output_dir
    assert main(["run", str(cfg), "--force", "-o", "run.bootstrap=200", "-o", "name=my audit"]) == 130
    err = capsys.readouterr().err
    assert "interrupted during stage translator" in err
    assert str(out / "cache") in err
    assert f"sing-audit run {cfg} --force -o run.bootstrap=200 -o 'name=my audit'" in err
    log = (out / "logs" / "run.log").read_text()
    assert "stage translator: interrupted after " in log

    assert main(["merge", str(cfg)]) == 130
    err = capsys.readouterr().err
    assert "interrupted during stage translator" in err and f"sing-audit merge {cfg}\n" in err


def test_ctrl_c_outside_a_stage_still_says_how_to_resume(synthetic_config, monkeypatch, capsys):
    from sing_audit.pipeline.run_folder import RunFolder

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunFolder, "open", interrupted)
    cfg = synthetic_config()
    assert main(["run", str(cfg)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "interrupted during stage" not in err
    assert f"sing-audit run {cfg}" in err


def test_ctrl_c_outside_an_audit_just_says_interrupted(synthetic_config, monkeypatch, capsys):
    import sing_audit.pipeline as pipeline

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "build_plan", interrupted)
    assert main(["validate", str(synthetic_config())]) == 130
    assert capsys.readouterr().err == "sing-audit: interrupted\n"


def test_the_resume_command_keeps_shard_and_debug_and_names_torchrun(monkeypatch):
    from sing_audit.cli import build_parser
    from sing_audit.cli.run import interrupted_message
    from sing_audit.pipeline.stages import record_stage_exit

    exc = KeyboardInterrupt()
    record_stage_exit(exc, "extract", 1.5)
    args = build_parser().parse_args(["--debug", "run", "my audit.yaml", "--shard", "1/4", "-o", "run.seed=3"])
    text = interrupted_message(args, exc)
    assert text.startswith("sing-audit: interrupted during stage extract (after 1.50s)")
    assert text.endswith("sing-audit --debug run 'my audit.yaml' --shard 1/4 -o run.seed=3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    text = interrupted_message(build_parser().parse_args(["run", "audit.yaml"]), exc)
    assert "same torchrun command" in text and "sing-audit run" not in text


# --------------------------------------------------------------------------- extraction


def test_ctrl_c_during_extraction_names_it_and_keeps_committed_chunks(tmp_path, monkeypatch, capsys):
    from sing_audit.builtins import torch_module
    from sing_audit.synthetic import SYNSETS

    # a resnet18 with a 3-class head: the test is about extraction, not about a big head
    r18 = {"name": "r18", "plugin": "torch_module", "model": "torchvision.models:resnet18", "head": "fc",
           "kwargs": {"weights": None, "num_classes": 3}, "weights": "random", "img_size": 32,
           "class_names": ["tench", "goldfish", "great white shark"]}
    cfg = image_folder_audit(tmp_path, [r18], dataset={"class_map": {s: i for i, s in enumerate(SYNSETS)}},
                             run={"device": "cpu", "folds": 2, "bootstrap": 100, "batch_size": 2, "chunk_images": 2})
    with np.load(tmp_path / "t.npz") as t:  # the precomputed target's class texts: 3, as the head
        np.savez(tmp_path / "t.npz", **{**t, "text_embeddings": t["text_embeddings"][:3]})
    features = torch_module.TorchModuleBackbone.features
    calls = []

    def interrupt_fourth_batch(self, images):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return features(self, images)

    monkeypatch.setattr(torch_module.TorchModuleBackbone, "features", interrupt_fourth_batch)
    assert main(["run", str(cfg)]) == 130
    err = capsys.readouterr().err
    assert "interrupted during stage extract" in err and f"sing-audit run {cfg}" in err
    out = tmp_path / "out"
    assert "stage extract: interrupted after " in (out / "logs" / "run.log").read_text()
    (progress,) = (out / "cache" / "features").glob(".partial-*/progress.json")
    assert json.loads(progress.read_text())["done"] == 6

    monkeypatch.setattr(torch_module.TorchModuleBackbone, "features", features)
    assert main(["run", str(cfg)]) == 0
    assert "resuming extraction at image 6 of 12" in (out / "logs" / "run.log").read_text()


# --------------------------------------------------------------------------- a real Ctrl-C


TINY_TEXT_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _close(a, b, path="") -> list[str]:
    """Where two JSON values differ beyond float tolerance."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in _close(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _close(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return [] if math.isclose(a, b, rel_tol=1e-7, abs_tol=1e-9) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.slow
def test_sigint_during_the_text_stage_resumes_from_its_chunks(tmp_path):
    from sing_audit.synthetic import SYNSETS, write_image_folder

    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_TEXT_CLIP}))
    root = write_image_folder(tmp_path / "val", per_class=4, size=32)
    # a precomputed classifier with 1000 classes over the 12 images (aligned by id), so the
    # text stage embeds 1000 class prompts (4 chunks) and no backbone has to run
    ids = [f"{s}/{s}_{i}.png" for s in SYNSETS for i in range(4)]
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "classifier.npz",
        features=rng.normal(size=(len(ids), 1100)).astype(np.float32),
        labels=np.repeat(np.arange(3), 4),
        head_weight=rng.normal(size=(1000, 1100)).astype(np.float32),
        class_names=np.array([f"class {i}" for i in range(1000)]),
        image_ids=np.array(ids),
    )

    def config(out: str) -> Path:
        return write_config(tmp_path, {
            "output": out,
            "dataset": {"plugin": "image_folder", "root": str(root)},
            "target": {"plugin": "open_clip", "name": "clip", "model": f"local-dir:{clip}", "weights": "random"},
            "backbones": [{"name": "classifier", "plugin": "precomputed", "path": "classifier.npz"}],
            "report": {"formats": ["json"]},
            "policy": PIPELINE_POLICY,
            "run": {"device": "cpu", "folds": 2, "bootstrap": 100, "batch_size": 8},
        }, name=f"{out}.yaml")

    cfg = config("out")
    out = load_config(cfg).output_dir
    proc = subprocess.Popen([sys.executable, "-m", "sing_audit.cli", "run", str(cfg), "-o", "run.seed=0"],
                            env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not _chunks(out) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted: " + proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted during stage text" in err, err
    assert str(out / "cache") in err
    assert f"sing-audit run {cfg} -o run.seed=0" in err
    assert "stage text: interrupted after " in (out / "logs" / "run.log").read_text()
    committed = len(_chunks(out))
    assert committed >= 1
    assert not (out / "results.json").exists()

    assert main(["run", str(cfg), "-o", "run.seed=0"]) == 0
    log = (out / "logs" / "run.log").read_text()
    reused = [line for line in log.splitlines() if "prompt chunks from cache" in line]
    found = re.search(r"text: (\d+) of (\d+) prompt chunks from cache", reused[-1]) if reused else None
    assert found and int(found[1]) == committed < int(found[2]), reused
    assert _chunks(out) == []

    # the reference: the same audit, its text stage uninterrupted (the extraction, which
    # finished before the interrupt, is copied rather than repeated, to keep the test short)
    for kind in ("embeddings",):
        shutil.copytree(out / "cache" / kind, tmp_path / "ref" / "cache" / kind)
    assert main(["run", str(config("ref")), "--force"]) == 0  # --force: ref/ holds the copied cache
    assert "prompt chunks from cache" not in (tmp_path / "ref" / "logs" / "run.log").read_text()
    resumed = json.loads((out / "results.json").read_text())
    reference = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert _close(resumed["models"], reference["models"]) == []
    (text,) = (out / "cache" / "text").glob("*/values.npy")
    np.testing.assert_allclose(np.load(text), np.load(tmp_path / "ref" / text.relative_to(out)), rtol=0, atol=1e-12)
    assert resumed["passed"] == reference["passed"]
