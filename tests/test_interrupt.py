"""Ctrl-C (issue #11): the log and the terminal name the interrupted stage, the terminal
says how to resume, and chunked stages (extraction, text encoding) keep finished chunks."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from sing_audit.components import ImageTarget
from sing_audit.config import load_config
from sing_audit.host import create_registry
from sing_audit.runner import EmbeddingSource, Runner, build_plan

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


def _runner(synthetic_config) -> Runner:
    cfg = load_config(synthetic_config())
    return Runner(build_plan(cfg, create_registry(), "test"))


def _source(target) -> EmbeddingSource:
    return EmbeddingSource("fake", np.zeros((1, target.dim)), None, None, target, True, target.describe())


def _chunks(out: Path) -> list[Path]:
    from sing_audit.text_stage import CHUNK_KIND

    folder = out / "cache" / CHUNK_KIND
    return sorted(p for p in folder.glob("*/meta.json")) if folder.is_dir() else []


# --------------------------------------------------------------------------- stages


def test_stage_log_says_finished_interrupted_or_failed(synthetic_config, caplog):
    from sing_audit.stages import stage_exit

    runner = _runner(synthetic_config)
    caplog.set_level(logging.INFO, logger="sing_audit")
    with runner.stage("dataset"):
        pass
    with pytest.raises(KeyboardInterrupt) as interrupted:
        with runner.stage("text"):
            raise KeyboardInterrupt
    with pytest.raises(ValueError) as failed:
        with runner.stage("translator"):
            raise ValueError("bad")
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("stage dataset: ") and line.endswith("s") and "after" not in line for line in lines)
    assert any(line.startswith("stage text: interrupted after ") for line in lines), lines
    assert any(line.startswith("stage translator: failed after ") and line.endswith("s (ValueError)") for line in lines), lines
    # an unfinished stage is not counted as if it had finished
    assert set(runner.stage_seconds) == {"dataset"}
    assert stage_exit(interrupted.value).name == "text"
    assert stage_exit(failed.value).name == "translator"


def test_nested_stages_name_the_innermost(synthetic_config, caplog):
    from sing_audit.stages import stage_exit

    runner = _runner(synthetic_config)
    caplog.set_level(logging.INFO, logger="sing_audit")
    with pytest.raises(KeyboardInterrupt) as info:
        with runner.stage("probes"):
            with runner.stage("text"):
                raise KeyboardInterrupt
    where = stage_exit(info.value)
    assert where.name == "text" and where.outer == ("probes",)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("stage probes: interrupted after ") for line in lines)


# --------------------------------------------------------------------------- chunked text


def test_chunked_class_text_equals_the_target_ensemble(synthetic_config):
    from sing_audit.text_stage import TEXT_CHUNK_PROMPTS

    runner = _runner(synthetic_config)
    target = FakeTextTarget()
    names = [f"class {i}" for i in range(301)]
    got = runner.class_text(_source(target), names)
    expected = FakeTextTarget().class_text_embeddings(names)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert got.shape == (301, target.dim)
    assert len(target.calls) > 1 and all(len(c) <= TEXT_CHUNK_PROMPTS for c in target.calls)
    assert sum(len(c) for c in target.calls) == 301 * 3
    # the ensemble is stored; its chunks were resume state only
    assert _chunks(runner.out) == []
    again = FakeTextTarget()
    np.testing.assert_array_equal(_runner(synthetic_config).class_text(_source(again), names), got)
    assert again.calls == [] and again.loads == 0


@pytest.mark.parametrize("n_templates,chunk", [(3, 7), (5, 4), (1, 256)])
def test_chunks_of_whole_classes_give_the_same_ensemble(tmp_path, n_templates, chunk):
    from contextlib import nullcontext

    from sing_audit.store import ArrayStore
    from sing_audit.text_stage import ChunkedText

    target = FakeTextTarget()
    target.templates = tuple(f"{{}} number {k}" for k in range(n_templates))
    names = [f"class {i}" for i in range(23)]
    chunked = ChunkedText(ArrayStore(tmp_path), target.describe(), target.encode_text, nullcontext, "fake", chunk)
    got = chunked.class_ensemble(names, target.templates)
    np.testing.assert_allclose(got, target.class_text_embeddings(names), rtol=0, atol=1e-12)
    # whole classes per chunk, at most `chunk` prompts (one class when it has more templates)
    sizes = [len(c) for c in chunked.class_chunks(names, target.templates)]
    assert all(n % n_templates == 0 and (n <= chunk or n == n_templates) for n in sizes) and sum(sizes) == 23 * n_templates


def test_interrupted_class_text_keeps_finished_chunks(synthetic_config, caplog):
    from sing_audit.stages import stage_exit
    from sing_audit.text_stage import TEXT_CHUNK_PROMPTS

    names = [f"class {i}" for i in range(400)]
    first = FakeTextTarget(interrupt_at=3)
    with pytest.raises(KeyboardInterrupt) as info:
        _runner(synthetic_config).class_text(_source(first), names)
    assert stage_exit(info.value).name == "text"
    runner = _runner(synthetic_config)
    assert len(_chunks(runner.out)) == 2  # the two chunks before the interrupt

    caplog.set_level(logging.INFO, logger="sing_audit")
    resumed = FakeTextTarget()
    got = runner.class_text(_source(resumed), names)
    n_chunks = math.ceil(len(names) / max(1, TEXT_CHUNK_PROMPTS // len(FakeTextTarget.templates)))
    assert n_chunks >= 4
    assert f"text: 2 of {n_chunks} prompt chunks from cache" in caplog.text
    # only the chunks not finished before the interrupt are encoded again
    assert len(resumed.calls) == n_chunks - 2 and resumed.calls[0] == first.calls[2]
    np.testing.assert_allclose(got, FakeTextTarget().class_text_embeddings(names), rtol=0, atol=1e-12)
    assert _chunks(runner.out) == []


def test_text_encoder_is_chunked_and_resumable(synthetic_config, caplog):
    from sing_audit.text_stage import TEXT_CHUNK_PROMPTS

    prompts = [f"concept {i}" for i in range(2 * TEXT_CHUNK_PROMPTS + 17)]
    first = FakeTextTarget(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        _runner(synthetic_config).text_encoder(_source(first))(prompts)
    runner = _runner(synthetic_config)
    assert len(_chunks(runner.out)) == 1

    caplog.set_level(logging.INFO, logger="sing_audit")
    resumed = FakeTextTarget()
    got = runner.text_encoder(_source(resumed))(prompts)
    assert "text: 1 of 3 prompt chunks from cache" in caplog.text
    assert [len(c) for c in resumed.calls] == [TEXT_CHUNK_PROMPTS, 17]
    np.testing.assert_array_equal(got, FakeTextTarget().encode_text(prompts))
    # concept prompts keep their chunks: they are the cache of ctx.encode_text
    cached = FakeTextTarget()
    np.testing.assert_array_equal(_runner(synthetic_config).text_encoder(_source(cached))(prompts), got)
    assert cached.calls == [] and cached.loads == 0


def test_a_target_that_overrides_class_text_embeddings_keeps_its_own(synthetic_config):
    class Own(FakeTextTarget):
        def class_text_embeddings(self, class_names):
            return np.tile(np.eye(self.dim)[0], (len(class_names), 1))

    target = Own()
    got = _runner(synthetic_config).class_text(_source(target), ["a", "b"])
    np.testing.assert_array_equal(got, np.tile(np.eye(target.dim)[0], (2, 1)))
    assert target.calls == []
