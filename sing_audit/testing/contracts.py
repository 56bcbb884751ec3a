"""Contract checks for backbone plugins: run them on a new architecture before auditing it.

A backbone (:class:`~sing_audit.components.ImageBackbone`) promises that its
``features(images)`` are exactly the input of its classifier, and that its ``head()``
(``W``, ``b``) reproduces the model's own logits: ``features @ Wᵀ + b == logits(images)``.
Everything the audit measures rests on that: a wrong feature (VGG's 512-d
``num_features`` instead of the 4096-d pre-logits output; the average of DeiT's two tokens
instead of both) or a head that is not affine (a cosine classifier) gives a null space that
does not leave the logits unchanged. :func:`check_backbone` checks it all on a batch of
images and returns a :class:`BackboneReport` with the exact null dimension; each failed
contract raises ``AssertionError`` with a message that says what is wrong.

Example (runnable: random weights at 32 px, a few seconds on a CPU, no network)::

    >>> import torch
    >>> from sing_audit.builtins.torch_module import TorchModuleBackbone
    >>> from sing_audit.testing import check_backbone
    >>> backbone = TorchModuleBackbone({"model": "torchvision.models:resnet18", "head": "fc",
    ...                                 "weights": "random", "img_size": 32})
    >>> backbone.load("cpu")
    >>> images = torch.randn(2, 3, 32, 32)
    >>> report = check_backbone(backbone, images, head_module=backbone.model.fc)
    >>> report.num_features, report.num_classes, report.null_dim
    (512, 1000, 0)
    >>> report.logit_error < 1e-5 and report.feature_error == 0.0
    True

In a plugin's own test suite, parametrize over the architectures it supports::

    @pytest.mark.parametrize("arch", ["my_cnn_small", "my_cnn_large"])
    def test_contract(arch):
        backbone = MyBackbone({"model": arch, "weights": "random"})
        backbone.load("cpu")
        check_backbone(backbone, torch.randn(2, 3, 64, 64), head_module=backbone.net.classifier)

``head_module`` is the module (or the tuple of modules, for a distilled pair) that the
model applies last; the check hooks it to see what it really receives. Without it, only
the logits contract is checked.

The checks:

1. ``head()`` is a :class:`~sing_audit.components.LinearHead`: finite c×m weight, c bias,
   a positive ``weight_eps``, class names and keys (if any) one per class.
2. ``transform()`` turns a PIL image into a C×H×W float tensor of the images' shape, so the
   images used for the check are what the plugin's own preprocessing produces.
3. ``features(images)`` is B×m (m = the head's width), finite, and the same on a second
   call (the model is in eval mode: no dropout, no batch statistics; with ``head_module``
   the second call is the hooked one of check 5).
4. ``logits(images)`` is B×c and ``features @ Wᵀ + b`` equals it to ``rtol`` (relative to
   the largest logit), in float64.
5. With ``head_module``: ``features`` equals the input the head module receives during
   ``logits(images)`` (forward pre-hook; a pair's inputs side by side, or once when both
   heads read the same tensor).
6. ``describe()`` is a JSON-serialisable dict (it keys the feature cache).

The null dimension is ``m − rank(W)`` under the default ``rank`` rule of
:func:`sing_audit.nullspace.split_head` (singular values above ``max(c, m)·weight_eps·σ_max``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BackboneReport",
    "check_backbone",
    "check_describe",
    "check_features_are_head_input",
    "check_head",
    "check_logits",
    "check_transform",
    "numerical_rank",
]


@dataclass
class BackboneReport:
    """What :func:`check_backbone` measured."""

    name: str
    num_features: int
    num_classes: int
    rank: int
    null_dim: int
    logit_error: float  # max |f Wᵀ + b − logits| / max |logits|
    feature_error: float | None  # max |features − head input| / max |head input|; None without head_module
    image_shape: tuple[int, ...]
    seconds: float
    describe: dict[str, Any] = field(default_factory=dict)
    features: np.ndarray | None = field(default=None, repr=False)  # the checked features, B×m float64

    @property
    def null_fraction(self) -> float:
        return self.null_dim / self.num_features if self.num_features else 0.0


def numerical_rank(weight: np.ndarray, weight_eps: float = float(np.finfo(np.float32).eps)) -> int:
    """Rank of ``weight`` under the ``rank`` rule: singular values above ``max(c, m)·weight_eps·σ_max``.

    For weights stored in float32 or coarser, the singular values come from the
    eigenvalues of the smaller Gram matrix in float64 (far cheaper than an SVD of a
    1000×4096 matrix, and exact enough: the cut sits ~1e-3·σ_max, the Gram's error near
    1e-13·σ_max²); for float64 weights, from an SVD.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2 or min(w.shape) == 0:
        return 0
    c, m = w.shape
    if weight_eps >= 1e-12:
        gram = w @ w.T if c <= m else w.T @ w
        s = np.sqrt(np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None))
    else:
        s = np.linalg.svd(w, compute_uv=False)
    if s.size == 0 or s[0] == 0:
        return 0
    return int(np.count_nonzero(s > max(c, m) * weight_eps * s[0]))


def _np(t) -> np.ndarray:
    import torch

    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    scale = float(np.abs(b).max()) if b.size else 0.0
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    return diff / max(scale, 1e-30)


def check_head(head, name: str = "backbone"):
    """Check that ``head`` is a well-formed :class:`~sing_audit.components.LinearHead`; return it."""
    from sing_audit.components import LinearHead

    assert isinstance(head, LinearHead), f"{name}: head() returned a {type(head).__name__}, not a LinearHead"
    w, b = head.weight, head.bias
    assert w.ndim == 2 and min(w.shape) > 0, f"{name}: head weight must be a non-empty classes × features matrix, got {w.shape}"
    assert b.shape == (w.shape[0],), f"{name}: head bias has shape {b.shape}, expected ({w.shape[0]},)"
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(b)), f"{name}: head weight or bias has NaN or Inf"
    assert head.weight_eps > 0, f"{name}: head weight_eps must be the (positive) machine epsilon of the stored weights"
    for attr in ("class_names", "class_keys"):
        names = getattr(head, attr)
        assert names is None or len(names) == w.shape[0], f"{name}: {len(names)} {attr} for {w.shape[0]} classes"
    return head


def check_logits(features: np.ndarray, logits: np.ndarray, weight: np.ndarray, bias: np.ndarray, *, rtol: float = 1e-5, name: str = "backbone") -> float:
    """Assert ``features @ Wᵀ + b`` equals ``logits`` to ``rtol`` (relative to the largest logit); return the error."""
    f, z = _np(features), _np(logits)
    assert z.ndim == 2 and z.shape == (f.shape[0], weight.shape[0]), (
        f"{name}: the model's output has shape {z.shape}, expected {(f.shape[0], weight.shape[0])} (batch × classes); "
        "a model that returns a tuple (e.g. a distilled model in training mode) must be in eval mode"
    )
    recon = f @ np.asarray(weight, np.float64).T + np.asarray(bias, np.float64)
    err = _rel(recon, z)
    assert err <= rtol, (
        f"{name}: features @ Wᵀ + b differ from the model's logits by {err:.3g} (relative, allowed {rtol:g}): the "
        "features are not the head's input, or the head is not the affine map (W, b) — e.g. it normalises its "
        "input (a cosine classifier), has a non-linear layer, or a distilled pair is combined differently"
    )
    return err


def check_features_are_head_input(backbone, images, head_module, features=None, *, rtol: float = 0.0, name: str = "backbone"):
    """Assert ``backbone.features(images)`` is what ``head_module`` receives during ``backbone.logits(images)``.

    ``head_module`` is a module or a tuple of modules (a distilled pair): their inputs are
    concatenated in order, or taken once when every module reads the same tensor. The
    default ``rtol=0`` asks for equality (features read with a hook are bit-identical).
    Returns ``(relative error, logits)``: the logits of the hooked ``logits(images)`` call.
    """
    import torch

    from sing_audit.head_inputs import head_inputs
    from sing_audit.heads import head_modules

    modules = head_modules(head_module)
    inputs, logits = head_inputs(lambda x: backbone.logits(x), modules, images)
    flat = [x.detach().reshape(x.shape[0], -1) for x in inputs]
    same = all(x is inputs[0] or (x.shape == inputs[0].shape and torch.equal(x, inputs[0])) for x in inputs[1:])
    expected = flat[0] if same else torch.cat(flat, dim=1)
    if features is None:
        features = backbone.features(images)
    f = _np(features)
    e = _np(expected)
    kinds = ", ".join(type(m).__name__ for m in modules)
    assert f.shape == e.shape, (
        f"{name}: features have shape {f.shape} but the head ({kinds}) receives {e.shape}: the features are not the "
        "head's input (e.g. VGG's 4096-d pre-logits output, not its 512-d num_features; a distilled pair's two tokens "
        "side by side, not their average)"
    )
    err = _rel(f, e)
    assert err <= rtol, (
        f"{name}: features differ from the input of the head ({kinds}) by {err:.3g} (relative, allowed {rtol:g}); "
        "if they differ between calls, the model is not in eval mode (dropout, batch statistics)"
    )
    return err, logits


def check_transform(backbone, image_shape: Sequence[int], name: str = "backbone") -> tuple[int, ...]:
    """Assert ``backbone.transform()`` turns a PIL image into a float tensor of ``image_shape`` (C×H×W)."""
    import torch
    from PIL import Image

    img = Image.new("RGB", (53, 41), (200, 30, 90))
    x = backbone.transform()(img)
    assert isinstance(x, torch.Tensor), f"{name}: transform() returned a {type(x).__name__}, not a tensor"
    assert x.dtype.is_floating_point, f"{name}: transform() returned {x.dtype}, not a float tensor"
    assert tuple(x.shape) == tuple(image_shape), (
        f"{name}: transform() gives images of shape {tuple(x.shape)} but the check ran on {tuple(image_shape)}: "
        "check with images the plugin's own preprocessing produces"
    )
    return tuple(x.shape)


def check_describe(backbone, name: str = "backbone") -> dict[str, Any]:
    """Assert ``describe()`` is a JSON-serialisable dict that survives a round trip; return it."""
    d = backbone.describe()
    assert isinstance(d, dict) and d, f"{name}: describe() must return a non-empty dict, got {type(d).__name__}"
    try:
        again = json.loads(json.dumps(d))
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{name}: describe() is not JSON-serialisable ({exc}); it keys the feature cache") from exc
    assert again == d, f"{name}: describe() changes in a JSON round trip (tuples or non-string keys?)"
    return d


def check_backbone(
    backbone,
    images,
    head_module=None,
    *,
    rtol: float = 1e-5,
    expected_null_dim: int | None = None,
    name: str | None = None,
) -> BackboneReport:
    """Run every contract check on a loaded :class:`~sing_audit.components.ImageBackbone`.

    :param backbone: a backbone after ``load(device)``.
    :param images: a B×C×H×W float tensor (B ≥ 2 catches batch-dependent heads), shaped
        like the output of ``backbone.transform()``.
    :param head_module: the classifier module (or tuple of modules) inside the model,
        to check that the features are what it receives; ``None`` skips that check.
    :param rtol: allowed relative error of ``features @ Wᵀ + b`` against the logits.
    :param expected_null_dim: when given, the exact null dimension must equal it.
    :raises AssertionError: on the first broken contract, saying which and why.
    """
    import torch

    from sing_audit.components import ImageBackbone

    label = name or type(backbone).__name__
    start = time.perf_counter()
    assert isinstance(backbone, ImageBackbone), f"{label}: a {type(backbone).__name__} is not an ImageBackbone"
    assert isinstance(images, torch.Tensor) and images.ndim == 4, "images must be a B×C×H×W tensor"
    head = check_head(backbone.head(), label)
    c, m = head.weight.shape
    check_transform(backbone, images.shape[1:], label)
    with torch.no_grad():
        feats = backbone.features(images)
    f = _np(feats)
    assert f.ndim == 2 and f.shape == (images.shape[0], m), (
        f"{label}: features(images) has shape {tuple(f.shape)}, expected {(images.shape[0], m)} (batch × the head's "
        "width)"
    )
    assert np.all(np.isfinite(f)), f"{label}: features have NaN or Inf"
    feature_error = None
    if head_module is not None:
        # one hooked logits() call: the head's real input (equal to features only if the model is
        # deterministic, i.e. in eval mode) and the logits
        feature_error, logits = check_features_are_head_input(backbone, images, head_module, feats, name=label)
    else:
        with torch.no_grad():
            again = backbone.features(images)
            logits = backbone.logits(images)
        assert np.array_equal(f, _np(again)), (
            f"{label}: features(images) differ between two calls: the model is not in eval mode (dropout, batch "
            "statistics) or is not deterministic"
        )
    logit_error = check_logits(f, _np(logits), head.weight, head.bias, rtol=rtol, name=label)
    desc = check_describe(backbone, label)
    rank = numerical_rank(head.weight, head.weight_eps)
    null_dim = m - rank
    if expected_null_dim is not None:
        assert null_dim == expected_null_dim, (
            f"{label}: the head's exact null dimension is {null_dim} ({m} features − rank {rank}), expected "
            f"{expected_null_dim}"
        )
    return BackboneReport(
        name=label,
        num_features=int(m),
        num_classes=int(c),
        rank=rank,
        null_dim=int(null_dim),
        logit_error=float(logit_error),
        feature_error=None if feature_error is None else float(feature_error),
        image_shape=tuple(int(s) for s in images.shape[1:]),
        seconds=time.perf_counter() - start,
        describe=desc,
        features=f,
    )
