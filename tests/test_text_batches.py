"""Planning of text batches: distinct prompts, length-sorted batches, per-device sizes."""

from __future__ import annotations

import numpy as np
import pytest

from sing_audit.text_batches import (
    CPU_TEXT_BATCH,
    CUDA_TEXT_BATCH,
    default_text_batch_size,
    distinct_prompts,
    length_sorted_batches,
)


def test_distinct_prompts_scatter_back_to_the_input():
    prompts = ["crane", "tench", "crane", "", "tench", "crane"]
    distinct, inverse = distinct_prompts(prompts)
    assert distinct == ["crane", "tench", ""]  # first-seen order
    assert [distinct[i] for i in inverse] == prompts
    empty, none = distinct_prompts([])
    assert empty == [] and none.shape == (0,)


def test_length_sorted_batches_cover_every_row_once_shortest_first():
    lengths = np.array([9, 3, 77, 3, 5, 12, 5])
    batches = length_sorted_batches(lengths, 3)
    assert [b.tolist() for b in batches] == [[1, 3, 4], [6, 0, 5], [2]]  # stable among equal lengths
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(7))
    assert [int(lengths[b].max()) for b in batches] == [5, 12, 77]
    assert length_sorted_batches([], 4) == []


@pytest.mark.parametrize("bad", [0, -1])
def test_batch_size_must_be_positive(bad):
    with pytest.raises(ValueError, match="batch_size"):
        length_sorted_batches([1, 2], bad)


def test_default_batch_size_per_device():
    assert default_text_batch_size("cpu") == CPU_TEXT_BATCH
    assert default_text_batch_size("cuda") == default_text_batch_size("cuda:1") == CUDA_TEXT_BATCH
    assert default_text_batch_size("mps") == CPU_TEXT_BATCH
