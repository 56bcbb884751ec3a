"""Reading a head's inputs: forward pre-hooks on the head module(s) while the whole model
runs, so the features are by construction what the folded head (:mod:`sing_audit.heads`)
consumes. Pure torch helpers; no I/O, no config."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import HeadError
from .heads import FoldedHead, head_modules

__all__ = ["head_features", "head_inputs", "probe_shared_input"]


def head_inputs(model, modules: Sequence[Any], images) -> tuple[list[Any], Any]:
    """Run ``model(images)`` with forward pre-hooks on ``modules``.

    Returns ``(inputs, output)``: the first positional input each module received, in
    the order of ``modules``. A module that is never called, or called more than once,
    raises :class:`HeadError` (its input would not be one feature vector per image).
    """
    import torch

    seen: list[list[Any]] = [[] for _ in modules]
    handles = []

    def make_hook(i):
        def hook(_module, args):
            if not args or not isinstance(args[0], torch.Tensor):
                raise HeadError(f"head module {type(modules[i]).__name__} was called without a tensor input")
            seen[i].append(args[0])

        return hook

    try:
        for i, m in enumerate(modules):
            handles.append(m.register_forward_pre_hook(make_hook(i)))
        with torch.no_grad():
            output = model(images)
    finally:
        for h in handles:
            h.remove()
    for m, calls in zip(modules, seen):
        if len(calls) != 1:
            what = "never called" if not calls else f"called {len(calls)} times"
            raise HeadError(
                f"head module {type(m).__name__} was {what} in one forward pass, so its input is not one feature "
                "vector per image; the model does not use get_classifier()'s module as its final layer"
            )
    return [calls[0] for calls in seen], output


def _flatten_input(x, conv: bool, module) -> Any:
    b = x.shape[0]
    if conv:
        if x.ndim != 4 or tuple(x.shape[2:]) != (1, 1):
            raise HeadError(
                f"the 1×1 convolution head reads a map of shape {tuple(x.shape[1:])}, not a pooled C×1×1 vector: "
                "its logits are per position, not one affine map of one feature vector"
            )
        return x.reshape(b, -1)
    if x.ndim != 2:
        raise HeadError(
            f"the head {type(module).__name__} reads an input of shape {tuple(x.shape)}, not batch × features "
            "(it is applied per token or position and pooled afterwards), so its input is not one feature vector"
        )
    return x


def _same(tensors: Sequence[Any]) -> bool:
    import torch

    first = tensors[0]
    return all(t is first or (t.shape == first.shape and torch.equal(t, first)) for t in tensors[1:])


def head_features(model, head: FoldedHead, images):
    """``(features, logits)`` of ``images``: exactly what the folded ``head`` consumes, and the model's output.

    One forward pass of ``model`` with pre-hooks on ``head.modules``; each input is
    flattened (a 1×1 convolution's ``B×C×1×1`` to ``B×C``) and, for a pair of heads on
    their own tensors, concatenated in order.
    """
    import torch

    inputs, output = head_inputs(model, head.modules, images)
    convs = head.conv_input or (False,) * len(inputs)
    flat = [_flatten_input(x, c, m) for x, c, m in zip(inputs, convs, head.modules)]
    if len(flat) == 1 or head.shared_input:
        if len(flat) > 1 and not _same(inputs):
            raise HeadError("the heads of the pair were folded as reading one tensor, but they read different ones")
        f = flat[0]
    else:
        f = torch.cat(flat, dim=1)
    if f.shape[1] != head.num_features:
        raise HeadError(f"the head reads {f.shape[1]} features but its folded weight has {head.num_features} columns")
    return f, output


def probe_shared_input(model, classifier, images) -> bool:
    """Whether every module of a tuple head reads the same tensor (one forward pass)."""
    modules = head_modules(classifier)
    if len(modules) == 1:
        return True
    inputs, _ = head_inputs(model, modules, images)
    return _same(inputs)
