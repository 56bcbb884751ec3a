"""The hooked-head backbone: a whole model runs, a forward pre-hook on its classification
layer captures that layer's input as the features, and the layer is folded into one
affine map (:mod:`sing_audit.heads`).

For model plugins whose networks keep the head as a named submodule (a ``torch_module``
factory, a Hugging Face ``AutoModelForImageClassification``): subclass
:class:`HookedHeadBackbone`, and in ``load`` set ``model``, and ``head_module`` /
``head_affine`` from :func:`find_head_layer`.
"""

from __future__ import annotations

from .components import ImageBackbone, LinearHead
from .errors import ConfigError, HeadError
from .head_inputs import head_inputs
from .heads import HeadFolders, affine_of
from .host import BuildContext
from .imagenet import imagenet_class_info
from .weights import ResolvedWeights

__all__ = ["HookedHeadBackbone", "find_head_layer", "linear_head_from"]


def find_head_layer(model, path: str, what: str, folders: HeadFolders | None = None):
    """``(module, Affine)``: the head module at dotted ``path`` and its fold.

    Folding is :func:`sing_audit.heads.affine_of`: Linear, 1×1 Conv2d, eval BatchNorm1d
    and Sequential chains of them with Flatten/Dropout/Identity; anything else (a head
    that normalises its input, a custom module) raises :class:`HeadError`. ``folders``: the
    plugins' head folders (:meth:`sing_audit.host.Registry.head_folders`).
    """
    try:
        module = model.get_submodule(path)
    except AttributeError:
        from torch import nn

        names = [n for n, m in model.named_modules() if n and isinstance(m, (nn.Linear, nn.Conv2d))]
        listing = ", ".join(names[-8:]) or "none"
        raise ConfigError(
            f"{what} has no module {path!r}; its linear/convolution layers end with: {listing} (write the dotted "
            "path as in model.named_modules(), e.g. fc or classifier.6)"
        ) from None
    try:
        affine = affine_of(module, folders)
    except HeadError as exc:
        raise HeadError(
            f"{what}, head {path!r}: {exc}; point head at the classification layer (its input becomes the features), "
            "or export features and an equivalent head and use the precomputed backbone"
        ) from exc
    if affine.is_identity:
        raise HeadError(f"{what}, head {path!r}: the module is the identity ({type(module).__name__}), not a classifier")
    return module, affine


def linear_head_from(affine, class_names: list[str] | None = None, class_keys: list[str] | None = None) -> LinearHead:
    """A :class:`LinearHead` from a folded head; ImageNet names and synsets for 1000 classes."""
    w64 = affine.weight.numpy().copy()
    b64 = None if affine.bias is None else affine.bias.numpy().copy()
    if class_names is None and class_keys is None:
        info = imagenet_class_info(int(w64.shape[0]))
        if info is not None:
            class_keys, class_names = list(info[0]), list(info[1])
    return LinearHead(weight=w64, bias=b64, weight_eps=float(affine.eps), class_names=class_names, class_keys=class_keys)


class HookedHeadBackbone(ImageBackbone):
    """Shared machinery: run the whole model, capture the head module's input with a pre-hook.

    Subclasses set ``self.model`` (eval mode), ``self.head_module``, ``self.head_affine``
    and ``self.head_path`` in :meth:`load`, and may override :meth:`_forward`,
    :meth:`_class_names` and :meth:`_class_keys`.
    """

    model = None
    head_module = None
    head_affine = None
    head_path: str | None = None
    device = "cpu"

    def __init__(self, options, context: BuildContext | None = None) -> None:
        """Validate ``options`` with the subclass's ``Options``; nothing is built yet. The
        build ``context``'s registry supplies the plugins' head folders."""
        if not isinstance(options, self.Options):
            options = self.Options.model_validate(options)
        self.options = options
        self.weights_digest: str | None = None
        self._resolved: ResolvedWeights | None = None
        self.random_weights = options.weights.strip().lower() == "random"
        self.head_folders: HeadFolders = context.registry.head_folders() if context is not None else {}

    def _require_model(self):
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}: call load(device) before using the model")
        return self.model

    def _what(self) -> str:
        return f"model {getattr(self.options, 'model', '?')!r}"

    def _forward(self, x):
        """The model's raw output for a batch."""
        return self.model(x)

    @staticmethod
    def _logits_of(output, what: str):
        import torch

        if isinstance(output, torch.Tensor):
            return output
        logits = getattr(output, "logits", None)
        if isinstance(logits, torch.Tensor):
            return logits
        if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            return output[0]
        raise HeadError(f"{what} returns a {type(output).__name__}, not a logits tensor (nor an object with .logits)")

    def _run(self, images):
        """``(logits, head input)`` of one forward pass."""
        self._require_model()
        what = self._what()
        try:
            inputs, out = head_inputs(self._forward, (self.head_module,), images.to(self.device))
        except HeadError as exc:
            raise HeadError(f"{what}, head {self.head_path!r}: {exc}") from exc
        f = inputs[0]
        if f.ndim == 4 and tuple(f.shape[-2:]) == (1, 1):  # a pooled map (1×1 conv, or Flatten first)
            f = f.reshape(f.shape[0], -1)
        if f.ndim != 2 or f.shape[0] != images.shape[0]:
            raise HeadError(
                f"the head {self.head_path!r} of {what} receives a tensor of shape {list(f.shape)}, not batch × "
                "features: it runs on every position or token, so no single feature vector per image feeds it; "
                "point head at a layer after pooling"
            )
        return self._logits_of(out, what), f

    def features(self, images):
        return self._run(images)[1]

    def logits(self, images):
        return self._run(images)[0]

    def _class_names(self) -> list[str] | None:
        return None

    def _class_keys(self) -> list[str] | None:
        return None

    def head(self) -> LinearHead:
        self._require_model()
        return linear_head_from(self.head_affine, self._class_names(), self._class_keys())
