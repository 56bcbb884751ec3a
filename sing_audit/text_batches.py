"""How a target's text encoder batches prompts: each distinct prompt once, in batches of
similar token length, at the batch size that is fastest on the device.

A CLIP-family text transformer (open_clip's CLIP and EVA02 towers, transformers'
``CLIPTextModel``) is causal and pools one token: the end-of-text token (or the first).
Under a causal mask the output at a position depends on the tokens up to it only, so the
padding after the pooled token changes nothing, and a batch's token tensor can be cut to
its longest prompt: the embeddings are the same (up to float rounding of differently
shaped matrix products). ImageNet class prompts are about 8 of a 77-token context, so
most of the full-context work was padding. The targets decide from the model's own
attributes whether the cut is safe (see each target's ``encode_text``); these helpers only
plan the batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["CPU_TEXT_BATCH", "CUDA_TEXT_BATCH", "default_text_batch_size", "distinct_prompts", "length_sorted_batches"]

#: prompts per text forward on a CPU. Measured with benchmarks/text_batch_sizes.py (open_clip
#: ViT-B-32 text tower at random init, the 1000 ImageNet class prompts "an image of a {}",
#: length-sorted and cut, 2 torch threads on 2 cores shared with other jobs, load
#: average 9-12, so ±10 %): first sweep 32: 87.1 s, 64: 46.8 s, 128: 40.9 s, 256: 29.1 s,
#: 1000: 37.0 s; second sweep 128: 32.5 s, 256: 30.9 s, 512: 31.3 s. Small batches pay
#: per-forward overhead (every layer's weights read again, thread synchronisation) that
#: the cut no longer hides; from 128 to 512 it is flat, 256 the best of both sweeps.
CPU_TEXT_BATCH = 256

#: prompts per text forward on a CUDA device: a GPU is only busy with wide batches. Not
#: measured here (no GPU); the value the targets used before the cut, and the CPU's best.
CUDA_TEXT_BATCH = 256


def default_text_batch_size(device: str) -> int:
    """The text batch size for ``device`` ("cpu", "cuda", "cuda:1", "mps", ...): the
    CUDA value for CUDA devices, the CPU value for everything else (MPS included, which
    was not measured)."""
    return CUDA_TEXT_BATCH if str(device).startswith("cuda") else CPU_TEXT_BATCH


def distinct_prompts(prompts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct prompts in first-seen order, and for every input prompt the index of
    its distinct prompt: ``[distinct[i] for i in inverse] == list(prompts)``. Two classes
    with the same name (ImageNet has two "crane"s) or a repeated template are encoded once."""
    index: dict[str, int] = {}
    inverse = np.fromiter((index.setdefault(str(p), len(index)) for p in prompts), dtype=np.int64, count=len(prompts))
    return list(index), inverse


def length_sorted_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of at most ``batch_size``, shortest prompts first: the rows
    sorted by length (stably, so equal lengths keep their order), then cut into
    consecutive batches. Every row is in exactly one batch; a batch's longest row is the
    length its token tensor is cut to."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1:
        raise ValueError(f"lengths must be one-dimensional, got shape {lengths.shape}")
    size = int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + size] for i in range(0, order.size, size)]
