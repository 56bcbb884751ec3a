"""The text stage at its floor: length-sorted batches cut after their longest prompt give
the full-context embeddings, in the input order, for open_clip's CLIP and EVA02 towers;
a tower that is not causal or pools a padded position keeps the full context.

Tolerance: the forward runs in float32, and a cut batch multiplies differently shaped
matrices (other blocking and summation order), so rows differ by float32 rounding
accumulated over the layers (1.6e-7 on the unit class embeddings of ViT-B-32 in
benchmarks/run.py --only text; raw rows ~4e-6). Compared in
float64 after unit-normalising (the ensemble and every score use directions only):
max abs difference < 1e-5, far below the difference between two prompts (checked > 1e-3).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from sing_audit_open_clip.target import OpenClipTarget
from sing_audit_open_clip.text_cut import _full_context_reason

SIZE = 64
ATOL = 1e-5

PROMPTS = [
    "a",
    "an image of a tench",
    "an image of a great white shark, a large and dangerous predatory fish of the open ocean, photographed underwater",
    "an image of a tench",  # a duplicate
    " ".join(f"word{i}" for i in range(120)),  # far past the 77-token context: the tokenizer truncates it
    "dog",
    "an image of a goldfish",
    "a",  # a duplicate of the first
]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _full_context(target: OpenClipTarget, prompts: list[str]) -> np.ndarray:
    """What the target computed before the cut: the model's own forward over the full context."""
    with torch.inference_mode():
        return target.model.encode_text(target._tokenizer(prompts)).double().numpy()


_BUILT: dict[str, OpenClipTarget] = {}


def _built(name: str) -> OpenClipTarget:
    """One target per architecture for the whole module (each test restores what it patches)."""
    if name not in _BUILT:
        t = OpenClipTarget(OpenClipTarget.Options(model=name, weights="random", image_size=SIZE))
        t.load("cpu")
        _BUILT[name] = t
    return _BUILT[name]


@pytest.fixture(scope="module", params=["ViT-S-32-alt", "EVA02-B-16"])
def target(request):
    return _built(request.param)


def _token_embedding(target: OpenClipTarget):
    model = target.model
    return model.token_embedding if hasattr(model, "token_embedding") else model.text.token_embedding


def _record(target: OpenClipTarget):
    seen: list[tuple[int, int]] = []
    handle = _token_embedding(target).register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    return seen, handle


def test_cut_batches_equal_the_full_context_in_input_order(target, monkeypatch):
    monkeypatch.setattr(target, "text_batch_size", 3)
    seen, handle = _record(target)
    try:
        got = target.encode_text(PROMPTS)
    finally:
        handle.remove()
    want = _full_context(target, PROMPTS)
    assert got.shape == want.shape and got.dtype == np.float64
    assert np.abs(_unit(got) - _unit(want)).max() < ATOL
    # duplicates get the same row, and distinct prompts differ far beyond the tolerance
    np.testing.assert_array_equal(got[0], got[7])
    np.testing.assert_array_equal(got[1], got[3])
    assert np.abs(_unit(got)[1] - _unit(got)[6]).max() > 100 * ATOL
    # six distinct prompts in batches of 3, shortest first; only the truncated one needs 77 tokens
    assert [b for b, _ in seen] == [3, 3]
    assert seen[0][1] < seen[1][1] == 77
    # another order of the same prompts: the same rows, permuted
    perm = np.random.default_rng(0).permutation(len(PROMPTS))
    again = target.encode_text([PROMPTS[i] for i in perm])
    assert np.abs(_unit(again) - _unit(got)[perm]).max() < ATOL


def test_short_prompts_never_run_the_full_context(target):
    seen, handle = _record(target)
    try:
        got = target.encode_text(["a dog", "an image of a cat", "cat"])
    finally:
        handle.remove()
    assert seen == [(3, 2 + len(target._tokenizer.encode("an image of a cat")))]  # start + words + end
    assert np.abs(_unit(got) - _unit(_full_context(target, ["a dog", "an image of a cat", "cat"]))).max() < ATOL


def test_last_token_pooling_keeps_the_full_context(monkeypatch, caplog):
    t = _built("ViT-S-32-alt")
    prompts = ["a dog", "an image of a cat"]
    # pooling the last position reads the padding: the cut would change the embedding
    monkeypatch.setattr(t.model, "text_pool_type", "last")
    seen, handle = _record(t)
    caplog.set_level(logging.DEBUG, logger="sing_audit")
    try:
        got = t.encode_text(prompts)
    finally:
        handle.remove()
    assert seen == [(2, 77)]
    assert "full context length (pooling 'last'" in caplog.text
    np.testing.assert_allclose(got, _full_context(t, prompts), rtol=0, atol=1e-5)


def test_a_bidirectional_tower_keeps_the_full_context(monkeypatch, caplog):
    t = _built("ViT-S-32-alt")
    # no causal mask: every position sees the padding after it
    monkeypatch.setattr(t.model, "attn_mask", torch.zeros(77, 77))
    seen, handle = _record(t)
    caplog.set_level(logging.DEBUG, logger="sing_audit")
    try:
        t.encode_text(["a dog", "an image of a cat"])
    finally:
        handle.remove()
    assert seen == [(2, 77)]
    assert "mask is not causal" in caplog.text


def test_towers_the_cut_does_not_apply_to():
    tower = torch.nn.Linear(2, 2)  # e.g. a Hugging Face text tower: no positional embedding of its own
    assert "no positional embedding" in _full_context_reason(tower, "argmax", 2, 77)
    text = torch.nn.Module()
    text.positional_embedding = torch.nn.Parameter(torch.zeros(77, 4))
    text.register_buffer("attn_mask", None)
    assert "no causal mask" in _full_context_reason(text, "argmax", 2, 77)
    text.register_buffer("attn_mask", torch.full((77, 77), float("-inf")).triu(1))
    assert _full_context_reason(text, "argmax", 2, 77) is None
    assert _full_context_reason(text, "eos", 2, 77) is None
    assert "pooling 'none'" in _full_context_reason(text, "none", 2, 77)
    assert "without an eos id" in _full_context_reason(text, "eos", None, 77)
    text.cls_emb = torch.nn.Parameter(torch.zeros(4))  # CoCa: a class token that sees everything
    assert "class token" in _full_context_reason(text, "argmax", 2, 77)
