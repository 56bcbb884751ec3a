"""Reading a classifier head as one affine map ``logits = W f + b``, and finding its ``f``.

Pure torch → numpy helpers, used by model plugins (the ``timm`` backbone, the hooked-head
backbones) and by :mod:`sing_audit.testing`. No I/O, no config.

What folds (everything in float64, from the stored parameters):

- ``nn.Linear`` → ``(W, b)``.
- a 1×1 ``nn.Conv2d`` with ``groups=1`` and no padding (BiT's head), applied to a pooled
  ``B×C×1×1`` map → the flattened ``(W[:, :, 0, 0], b)``.
- an eval-mode ``nn.BatchNorm1d`` with running statistics → ``diag(γ/√(σ²+ε))`` and
  ``β − μ γ/√(σ²+ε)``; ``Dropout`` (eval), ``Identity`` and ``Flatten`` → the identity.
- a chain of the above: ``nn.Sequential`` (and subclasses that keep its ``forward``, such
  as the ``NormLinear`` heads of timm's RepViT/EfficientViT-MSRA/SHViT/iFormer) → the
  composition, e.g. ``W_lin diag(s)`` and ``W_lin t + b_lin`` for BatchNorm + Linear.
- a pair (tuple) of heads, as timm's distilled models return from ``get_classifier()``
  (DeiT distilled, LeViT, EfficientFormer, PiT, SwiftFormer): at inference timm returns
  the *mean* of the heads' logits (``(head(x) + head_dist(x_dist)) / 2``; the separate pair
  only when ``distilled_training`` is set *and* the model is in training mode). When both
  heads read the same tensor (LeViT: the pooled tokens) the fold is ``(mean W, mean b)``
  on that tensor; when they read different tensors (DeiT: class token and distillation
  token) the features are the concatenation ``[f_1, f_2]`` and ``W = [W_1/2, W_2/2]``.

What does not fold, with a :class:`~sing_audit.errors.HeadError` naming the module:
normalisation layers that use each input's own statistics (LayerNorm, GroupNorm, RMSNorm:
a cosine classifier normalises its input), BatchNorm in training mode or without running
statistics, ``nn.Linear`` subclasses with their own ``forward`` (they may normalise), and
any other module. A plugin teaches the folder a new module type through the
``register_head_folders`` hook (the timm family registers timm's ``Linear`` and LeViT's
``NormLinear``); the folders reach :func:`affine_of` and :func:`fold_head` as ``folders``.

The features are read where the head reads them (:mod:`sing_audit.head_inputs`): forward
pre-hooks on the head module(s) while the model runs, so ``features`` is by construction
the head's real input (VGG's 4096-d pre-logits MLP output, not its 512-d
``num_features``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import HeadError

__all__ = [
    "Affine",
    "FoldedHead",
    "HeadFolders",
    "affine_of",
    "compose",
    "fold_head",
    "head_input_width",
    "head_modules",
    "linear_affine",
    "type_path",
]


@dataclass
class Affine:
    """``y = weight @ x + bias`` on the flattened input; float64 torch tensors.

    ``weight`` is out×in; ``None`` means the identity (Dropout, Identity, Flatten), whose
    width is fixed by its neighbours. ``eps`` is the machine epsilon of the dtype the
    parameters were stored in. ``kind`` says what was folded (for messages and reports).
    """

    weight: Any | None
    bias: Any | None
    eps: float
    kind: str
    conv: bool = False  # a 1×1 convolution: its input is B×C×1×1

    @property
    def is_identity(self) -> bool:
        return self.weight is None


@dataclass
class FoldedHead:
    """A head as one affine map plus where its features come from.

    ``weight`` (c×m) and ``bias`` (c) are float64 numpy arrays; ``modules`` are the head
    modules whose inputs (flattened, concatenated in order when ``shared_input`` is
    false) are the features; ``input_dims`` are the widths of those inputs.
    """

    weight: np.ndarray
    bias: np.ndarray
    weight_eps: float
    modules: tuple[Any, ...]
    input_dims: tuple[int, ...]
    shared_input: bool
    description: str
    conv_input: tuple[bool, ...] = field(default=())

    @property
    def num_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])


# --------------------------------------------------------------------------- single modules

#: dotted type path (``module.QualName``) -> ``folder(module) -> Affine``; what the
#: ``register_head_folders`` hook collects (:meth:`sing_audit.host.Registry.head_folders`)
HeadFolders = Mapping[str, Callable[[Any], Affine]]


def type_path(cls: type) -> str:
    """The name a head folder is registered under: ``cls.__module__ + "." + cls.__qualname__``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _registered_folder(module, folders: HeadFolders | None) -> Callable[[Any], Affine] | None:
    """The folder registered for the module's type or its nearest base class (by name, so
    the library that defines the type is never imported to look it up)."""
    if not folders:
        return None
    for cls in type(module).__mro__:
        folder = folders.get(type_path(cls))
        if folder is not None:
            return folder
    return None


def _eps(t) -> float:
    import torch

    return float(torch.finfo(t.dtype).eps) if t.dtype.is_floating_point else float(torch.finfo(torch.float32).eps)


def _f64(t):
    import torch

    return t.detach().to("cpu", torch.float64)


def _is_normaliser(module) -> bool:
    from torch import nn

    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)):
        return True
    rms = getattr(nn, "RMSNorm", None)
    if rms is not None and isinstance(module, rms):
        return True
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return False
    name = type(module).__name__.lower()
    return any(k in name for k in ("layernorm", "rmsnorm", "groupnorm", "l2norm", "normalize"))


def compose(parts: Sequence[Affine], kind: str) -> Affine:
    """``parts`` applied in order (first to the input), as one :class:`Affine` (for a
    folder of a module that chains standard layers)."""
    import torch

    weight = None
    bias = None
    eps = 0.0
    conv = False
    for i, p in enumerate(parts):
        if i == 0:
            conv = p.conv
        elif p.conv and weight is not None:
            raise HeadError(f"head {kind}: a 1×1 convolution after other layers cannot be folded")
        if p.is_identity:
            continue
        eps = max(eps, p.eps)
        if weight is None:
            weight, bias = p.weight.clone(), (p.bias.clone() if p.bias is not None else None)
            continue
        if p.weight.shape[1] != weight.shape[0]:
            raise HeadError(
                f"head {kind}: layer widths do not chain ({p.kind} takes {p.weight.shape[1]} inputs, "
                f"the layer before gives {weight.shape[0]})"
            )
        new_bias = p.weight @ bias if bias is not None else None
        if p.bias is not None:
            new_bias = p.bias if new_bias is None else new_bias + p.bias
        weight = p.weight @ weight
        bias = new_bias
    if weight is None:
        return Affine(None, None, 0.0, kind)
    if bias is None:
        bias = torch.zeros(weight.shape[0], dtype=torch.float64)
    return Affine(weight, bias, eps or float(np.finfo(np.float32).eps), kind, conv)


def linear_affine(module) -> Affine:
    """The affine map of an ``nn.Linear`` (or a subclass whose ``forward`` is known to be
    ``x Wᵀ + b``: a head folder for such a subclass returns this)."""
    import torch

    w = _f64(module.weight)
    b = _f64(module.bias) if module.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    return Affine(w, b, _eps(module.weight), "Linear")


def affine_of(module, folders: HeadFolders | None = None) -> Affine:
    """Fold one head module into an :class:`Affine`, or raise :class:`HeadError` saying why not.

    :param folders: head folders registered by plugins (``register_head_folders``), tried
        first, for the module's type and then its base classes.
    """
    import torch
    from torch import nn

    name = type(module).__name__
    folder = _registered_folder(module, folders)
    if folder is not None:
        return folder(module)
    if isinstance(module, nn.Linear):
        if type(module).forward is not nn.Linear.forward:
            raise HeadError(
                f"the head is a {name}, a subclass of nn.Linear with its own forward(): sing-audit cannot tell "
                "whether it is affine (a cosine classifier, for one, normalises its input and weights, so its "
                "logits are not W f + b); if it is affine, register a folder for it with the "
                "register_head_folders hook"
            )
        return linear_affine(module)
    if isinstance(module, nn.Conv2d):
        pad = module.padding
        no_pad = pad == "valid" if isinstance(pad, str) else all(int(p) == 0 for p in pad)
        if tuple(module.kernel_size) != (1, 1) or module.groups != 1 or not no_pad:
            raise HeadError(
                f"the head is a Conv2d with kernel {tuple(module.kernel_size)}, groups {module.groups} and padding "
                f"{pad}: only a 1×1, ungrouped, unpadded convolution on a pooled map is a linear classifier"
            )
        w = _f64(module.weight).reshape(module.out_channels, module.in_channels)
        b = _f64(module.bias) if module.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        return Affine(w, b, _eps(module.weight), "Conv2d 1×1", conv=True)
    if isinstance(module, nn.BatchNorm1d):
        if module.training:
            raise HeadError(
                f"the head's {name} is in training mode: it normalises with each batch's statistics, so the "
                "logits of one image depend on the others; put the model in eval mode (model.eval())"
            )
        if module.running_mean is None or module.running_var is None:
            raise HeadError(
                f"the head's {name} keeps no running statistics (track_running_stats=False): it normalises with "
                "each batch's statistics, so it is not an affine map of one image's features"
            )
        var = _f64(module.running_var)
        mean = _f64(module.running_mean)
        scale = 1.0 / torch.sqrt(var + module.eps)
        if module.weight is not None:
            scale = scale * _f64(module.weight)
        shift = -mean * scale
        if module.bias is not None:
            shift = shift + _f64(module.bias)
        ref = module.weight if module.weight is not None else module.running_var
        return Affine(torch.diag(scale), shift, _eps(ref), "BatchNorm1d")
    if isinstance(module, nn.modules.dropout._DropoutNd):
        if module.training and module.p > 0:
            raise HeadError(f"the head's {name} is in training mode (it drops features at random); call model.eval()")
        return Affine(None, None, 0.0, name)
    if isinstance(module, (nn.Identity, nn.Flatten)):
        return Affine(None, None, 0.0, name)
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        parts = [affine_of(child, folders) for child in module]
        kinds = "+".join(p.kind for p in parts if not p.is_identity) or "Identity"
        return compose(parts, f"{name}({kinds})")
    if _is_normaliser(module):
        raise HeadError(
            f"the head contains a {name}, which normalises each input by its own statistics: the logits are not "
            "an affine function of the features (as with a cosine classifier), so the head has no null space "
            "that leaves them unchanged"
        )
    raise HeadError(
        f"the head is a {name}, which sing-audit cannot read as an affine map (it folds Linear, 1×1 Conv2d, "
        "eval-mode BatchNorm1d + Linear chains and distilled pairs); a head that normalises its input (a cosine "
        "classifier) or is not affine has no exact null space. If it is affine, register a folder for it with "
        "the register_head_folders hook"
    )


# --------------------------------------------------------------------------- whole heads


def head_modules(classifier) -> tuple[Any, ...]:
    """``get_classifier()``'s answer as a tuple of modules (a pair for distilled models)."""
    if isinstance(classifier, (tuple, list)):
        return tuple(classifier)
    return (classifier,)


def head_input_width(classifier) -> int | None:
    """The width of the features a head reads, from its modules' declared sizes alone (works on
    the ``meta`` device: no weights, no forward pass): the ``in_features`` of a Linear, the
    ``in_channels`` of a 1×1 Conv, the first such layer of a Sequential (LeViT's BatchNorm +
    Linear: its ``linear``). ``None`` when that is not enough: a tuple of heads (whether
    they read one tensor or each its own takes a forward pass), an Identity (no head), or a
    module of unknown kind."""
    from torch import nn

    modules = head_modules(classifier)
    if len(modules) != 1:
        return None
    m = modules[0]
    if isinstance(m, nn.Linear):
        return int(m.in_features)
    if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1):
        return int(m.in_channels)
    if isinstance(getattr(m, "linear", None), nn.Linear) and isinstance(getattr(m, "bn", None), nn.BatchNorm1d):
        return int(m.linear.in_features)
    if isinstance(m, nn.Sequential):
        for child in m:
            if isinstance(child, (nn.Linear, nn.Conv2d)):
                return head_input_width(child)
            if not isinstance(child, (nn.Dropout, nn.Identity, nn.Flatten)):
                return None
    return None


def fold_head(classifier, *, shared_input: bool | None = None, folders: HeadFolders | None = None) -> FoldedHead:
    """Fold a head module, or a tuple of them whose logits are averaged, into one affine map.

    :param classifier: what ``model.get_classifier()`` returns.
    :param shared_input: for a tuple, whether every head reads the same tensor (then the
        features are that tensor and ``W`` the mean of the heads' weights) or each its own
        (then the features are the concatenation and ``W = [W_1/k, …, W_k/k]``). Required
        for a tuple; :func:`sing_audit.head_inputs.probe_shared_input` finds it from one forward pass.
    :param folders: plugins' head folders, as for :func:`affine_of`.
    """
    import torch
    from torch import nn

    modules = head_modules(classifier)
    if not modules:
        raise HeadError("the model's get_classifier() returned an empty tuple: there is no head")
    for m in modules:
        if not isinstance(m, nn.Module):
            raise HeadError(f"the classifier is a {type(m).__name__}, not a torch module")
    folds = [affine_of(m, folders) for m in modules]
    for m, f in zip(modules, folds):
        if f.is_identity:
            raise HeadError(
                f"the head ({type(m).__name__}) is the identity: the model has no classification layer "
                "(num_classes=0), so there is no linear map whose null space could be audited"
            )
    if len(modules) == 1:
        f = folds[0]
        return FoldedHead(
            weight=f.weight.numpy().copy(),
            bias=f.bias.numpy().copy(),
            weight_eps=f.eps,
            modules=modules,
            input_dims=(int(f.weight.shape[1]),),
            shared_input=True,
            description=f.kind,
            conv_input=(f.conv,),
        )
    if shared_input is None:
        raise HeadError("a pair of heads needs shared_input: do both read the same tensor? (see sing_audit.head_inputs.probe_shared_input)")
    classes = {int(f.weight.shape[0]) for f in folds}
    if len(classes) != 1:
        raise HeadError(f"the heads of the pair give different numbers of classes ({sorted(classes)}); they cannot be averaged")
    k = len(folds)
    kinds = ", ".join(f.kind for f in folds)
    bias = sum(f.bias for f in folds) / k
    if shared_input:
        widths = {int(f.weight.shape[1]) for f in folds}
        if len(widths) != 1:
            raise HeadError(f"the heads of the pair read the same tensor but have different widths ({sorted(widths)})")
        weight = sum(f.weight for f in folds) / k
        desc = f"mean of {k} heads ({kinds}) on the same features"
    else:
        weight = torch.cat([f.weight / k for f in folds], dim=1)
        desc = f"mean of {k} heads ({kinds}) on their own features, concatenated"
    return FoldedHead(
        weight=weight.numpy().copy(),
        bias=bias.numpy().copy(),
        weight_eps=max(f.eps for f in folds),
        modules=modules,
        input_dims=tuple(int(f.weight.shape[1]) for f in folds),
        shared_input=bool(shared_input),
        description=desc,
        conv_input=tuple(f.conv for f in folds),
    )
