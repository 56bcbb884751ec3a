"""timm's own head modules, taught to the head folder (:mod:`sing_audit.heads`).

- ``timm.layers.Linear``: its ``forward`` only adds a TorchScript dtype cast, so it is
  ``x Wᵀ + b`` like ``nn.Linear`` (a subclass with a ``forward`` of its own is refused as
  any ``nn.Linear`` subclass is);
- LeViT's ``NormLinear`` (timm 1.0.x: ``forward(x) = self.linear(self.drop(self.bn(x)))``)
  → BatchNorm1d, Dropout and Linear composed.

Registered by type name through ``register_head_folders``, so timm is imported only when
one of its modules is folded.
"""

from __future__ import annotations

from typing import Any

from sing_audit.heads import Affine, HeadFolders, affine_of, compose, linear_affine
from sing_audit.hookspecs import hookimpl

__all__ = ["TIMM_HEAD_FOLDERS", "fold_levit_norm_linear", "fold_timm_linear"]


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


@hookimpl
def register_head_folders(register):
    for type_path, folder in TIMM_HEAD_FOLDERS.items():
        register(type_path, folder)
