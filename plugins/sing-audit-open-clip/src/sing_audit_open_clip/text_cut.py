"""Cutting open_clip text batches after their longest prompt's pooled token.

A causal text tower that pools one token at or before the end of text gives the same
embedding whatever follows that token, so a batch of short prompts need not run the
whole 77-token context (:meth:`~sing_audit_open_clip.target.OpenClipTarget.encode_text`).
Whether a tower may be cut is decided from its attributes, never from the model's name.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np

__all__ = ["cut_context", "pooled_positions"]

log = logging.getLogger("sing_audit")

#: the pooling rules of open_clip's ``text_global_pool`` that read one token at or before
#: the end of text (``last`` reads the final position, padding included; ``none`` all)
_ONE_TOKEN_POOLS = ("argmax", "eos", "first")


def pooled_positions(model, tokens, label: str) -> np.ndarray | None:
    """The position each row of ``tokens`` (P×L ids, padded) is pooled at, or None when
    the tokens after it may matter and the full context must be kept.

    Decided from the text tower's attributes, not the model's name: the cut is safe
    when the tower has its own positional embedding and a causal additive mask
    (``-inf`` above the diagonal, 0 on and below: position i sees tokens ≤ i only),
    no appended class token (CoCa pools one that sees every token), returns the
    pooled vector only, and pools ``argmax`` (the end-of-text token, the highest id),
    ``eos`` (the first ``eos_id``) or ``first`` — the rules of open_clip's
    ``text_global_pool``. Kept at full length, with the reason logged at debug: a
    bidirectional tower (SigLIP's ``no_causal_mask``), ``last`` pooling (reads the
    padding's end), ``none``, and Hugging Face towers (``HFTextEncoder``: its own
    attention mask and poolers). The cut keeps the pooled position inside every row
    and, for ``argmax``/``eos``, the first maximum (first eos) of a prefix holding it
    is the same position, so the pooled row is unchanged."""
    import torch

    tower, pool, eos = _text_tower(model)
    reason = _full_context_reason(tower, pool, eos, int(tokens.shape[1]))
    if reason is not None:
        log.debug("%s: text encoded at full context length (%s)", label, reason)
        return None
    if pool == "argmax":
        idx = tokens.argmax(dim=-1)
    elif pool == "eos":
        idx = (tokens == eos).int().argmax(dim=-1)
    else:  # first
        idx = torch.zeros(tokens.shape[0], dtype=torch.long)
    return idx.cpu().numpy().astype(np.int64)


def _text_tower(model) -> tuple[Any, str | None, int | None]:
    """The module holding the text tower's positional embedding and mask, its pooling
    rule and eos id: the model itself for open_clip's ``CLIP`` (which copies them from its
    ``TextTransformer``), ``model.text`` for ``CustomTextCLIP`` (EVA02, ...)."""
    if "positional_embedding" in getattr(model, "_parameters", {}) and hasattr(model, "text_pool_type"):
        return model, model.text_pool_type, getattr(model, "text_eos_id", None)
    tower = getattr(model, "text", None)
    return tower, getattr(tower, "pool_type", None), getattr(tower, "eos_id", None)


def _full_context_reason(tower, pool: str | None, eos: int | None, context: int) -> str | None:
    """Why ``tower`` must see the full context (None: it may be cut; see
    :func:`pooled_positions`)."""
    import torch

    pos = getattr(tower, "_parameters", {}).get("positional_embedding")
    if pos is None or pos.ndim != 2:
        return f"text tower {type(tower).__name__} has no positional embedding of its own"
    if not hasattr(tower, "_buffers") or "attn_mask" not in tower._buffers or tower._buffers["attn_mask"] is None:
        return "the text tower has no causal mask (bidirectional attention)"
    mask = tower._buffers["attn_mask"]
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1] or mask.shape[0] < context or pos.shape[0] < context:
        return f"the text tower's mask {tuple(mask.shape)} does not cover the {context}-token context"
    upper = torch.ones_like(mask, dtype=torch.bool).triu(1)
    if not (torch.isneginf(mask[upper]).all() and (mask[~upper] == 0).all()):
        return "the text tower's mask is not causal"
    if getattr(tower, "cls_emb", None) is not None:
        return "the text tower appends a class token that sees every position"
    if getattr(tower, "output_tokens", False):
        return "the text tower returns its token outputs too"
    if pool not in _ONE_TOKEN_POOLS:
        return f"pooling {pool!r} does not read a single token at or before the end of text"
    if pool == "eos" and eos is None:
        return "pooling 'eos' without an eos id"
    return None


def cut_context(model, length: int):
    """``model`` as it would be built with a ``length``-token context: a shallow copy
    whose text tower's positional embedding and causal mask are their first ``length``
    positions. Every weight is shared (nothing is copied or changed on ``model``), and the
    model's own ``encode_text`` runs on it; open_clip's ``CLIP.encode_text`` adds the whole
    positional embedding and mask, so it cannot take shorter tokens as it is."""
    tower, _, _ = _text_tower(model)

    def cut(module):
        view = copy.copy(module)
        view._parameters = dict(module._parameters)
        view._buffers = dict(module._buffers)
        view._parameters["positional_embedding"] = module._parameters["positional_embedding"][:length]
        view._buffers["attn_mask"] = module._buffers["attn_mask"][:length, :length]
        return view

    if tower is model:
        return cut(model)
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view._modules["text"] = cut(tower)
    return view
