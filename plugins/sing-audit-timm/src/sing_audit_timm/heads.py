"""timm's own head modules, taught to the head folder (:mod:`sing_audit.heads`).

- ``timm.layers.Linear``: its ``forward`` only adds a TorchScript dtype cast, so it is
  ``x Wᵀ + b`` like ``nn.Linear`` (a subclass with a ``forward`` of its own is refused as
  any ``nn.Linear`` subclass is);
- LeViT's ``NormLinear`` (timm 1.0.x: ``forward(x) = self.linear(self.drop(self.bn(x)))``)
  → BatchNorm1d, Dropout and Linear composed.

Registered by type name through ``register_head_folders``, so timm is imported only when
one of its modules is folded. :func:`fold_timm_head` folds a whole timm classifier's head.
"""

from __future__ import annotations

from typing import Any

from sing_audit.errors import HeadError
from sing_audit.head_inputs import probe_shared_input
from sing_audit.heads import (
    Affine,
    FoldedHead,
    HeadFolders,
    affine_of,
    compose,
    fold_head,
    head_modules,
    linear_affine,
)
from sing_audit.hookspecs import hookimpl

__all__ = ["TIMM_HEAD_FOLDERS", "fold_levit_norm_linear", "fold_timm_head", "fold_timm_linear"]


def fold_timm_linear(module: Any) -> Affine:
    """``timm.layers.Linear`` as ``nn.Linear``; a subclass with its own ``forward`` is refused."""
    from timm.layers.linear import Linear as TimmLinear

    if type(module).forward is TimmLinear.forward:
        return linear_affine(module)
    return affine_of(module)  # the core's message for an nn.Linear subclass with its own forward


def fold_levit_norm_linear(module: Any) -> Affine:
    """LeViT's ``NormLinear``: ``linear(drop(bn(x)))``."""
    parts = [affine_of(module.bn), affine_of(module.drop), affine_of(module.linear)]
    return compose(parts, "NormLinear(BatchNorm1d+Linear)")


#: the folders this family registers, by type path
TIMM_HEAD_FOLDERS: HeadFolders = {
    "timm.layers.linear.Linear": fold_timm_linear,
    "timm.models.levit.NormLinear": fold_levit_norm_linear,
}


def fold_timm_head(model, name: str, input_size: tuple[int, ...], device, folders: HeadFolders) -> FoldedHead:
    """``model.get_classifier()`` folded into one affine map (a distilled pair: whether both
    heads read one tensor is found from a forward pass of two seeded random images of
    ``input_size``); a model without a head, or in training mode, is a :class:`HeadError`."""
    import torch
    from torch import nn

    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    modules = head_modules(clf) if clf is not None else ()
    if not modules or any(isinstance(m, nn.Identity) for m in modules) or getattr(model, "num_classes", 1) == 0:
        raise HeadError(
            f"model {name!r} has no classification head (num_classes=0): there is no linear map whose null "
            "space could be audited; use a checkpoint with its classifier, or a model built with num_classes > 0"
        )
    if model.training:
        raise HeadError(f"model {name!r} is in training mode; its head is folded in eval mode only")
    try:
        shared = None
        if len(modules) > 1:
            images = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
            shared = probe_shared_input(model, clf, images)
        return fold_head(clf, shared_input=shared, folders=folders)
    except HeadError as exc:
        raise HeadError(
            f"model {name!r}: {exc}. Audit a model whose head is affine, or export its features and an "
            "equivalent affine head and use the precomputed backbone"
        ) from exc


@hookimpl
def register_head_folders(register):
    for type_path, folder in TIMM_HEAD_FOLDERS.items():
        register(type_path, folder)
