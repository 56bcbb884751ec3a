"""The ``tinynet`` backbone: :class:`~sing_audit_tinynet.model.TinyNet` as a sing-audit
:class:`~sing_audit.components.ImageBackbone`.

The contract every image backbone keeps (checked by :func:`sing_audit.testing.check_backbone`):

- ``features(images)`` is exactly the input of the classifier (here the pooled feature
  that :class:`~sing_audit_tinynet.model.ScaledLinearHead` receives);
- ``head()`` is that classifier as one affine map, ``logits = f Wᵀ + b``: the learned
  temperature is folded into ``W``;
- ``describe()`` names everything the features depend on, the weights' digest included;
- weights are a local file, or ``random`` when asked for explicitly — never a fallback.

Options (``audit.yaml``)::

    backbones:
      - name: tiny
        plugin: tinynet
        model: tinynet_s                 # or tinynet_m
        num_classes: 3
        weights: checkpoints/tiny.safetensors   # or: random (then seed: 0)
        class_names: [tench, goldfish, great white shark]
        img_size: 64
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from pydantic import Field, field_validator, model_validator

from sing_audit.components import ImageBackbone, LinearHead, ModelOptions
from sing_audit.errors import WeightsError
from sing_audit.host import suggest
from sing_audit.weights import (
    ResolvedWeights,
    file_digest,
    load_into,
    load_state_dict,
    resolve_weights,
    state_dict_digest,
    weights_description,
)

from .model import VARIANTS, TinyNet

__all__ = ["TinyNetBackbone"]


def _package() -> str:
    try:
        return f"sing-audit-tinynet {metadata.version('sing-audit-tinynet')}"
    except metadata.PackageNotFoundError:  # a source checkout on sys.path, not installed
        from . import __version__

        return f"sing-audit-tinynet {__version__} (not installed)"


class TinyNetBackbone(ImageBackbone):
    """TinyNet, a hand-written CNN with a temperature-scaled linear head; features are the head's input."""

    class Options(ModelOptions):
        model: str = Field("tinynet_s", description=f"variant: {', '.join(VARIANTS)}")
        weights: str = Field(description="a local .safetensors/.pt state dict of TinyNet, or random")
        num_classes: int = Field(ge=1, description="classes of the head")
        class_names: list[str] | None = Field(None, description="readable name per head index")
        img_size: int = Field(64, ge=8, description="images are resized and centre-cropped to this size")
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
        std: tuple[float, float, float] = (0.5, 0.5, 0.5)

        @field_validator("model")
        @classmethod
        def _known_variant(cls, v: str) -> str:
            if v not in VARIANTS:
                raise ValueError(f"unknown TinyNet variant {v!r}{suggest(v, list(VARIANTS))}")
            return v

        @model_validator(mode="after")
        def _names_per_class(self) -> TinyNetBackbone.Options:
            if self.class_names is not None and len(self.class_names) != self.num_classes:
                raise ValueError(f"class_names has {len(self.class_names)} names for num_classes = {self.num_classes}")
            return self

    plugin_name = "tinynet"

    def __init__(self, options: TinyNetBackbone.Options | dict[str, Any]) -> None:
        if not isinstance(options, self.Options):
            options = self.Options.model_validate(options)
        self.options = options
        self.model: TinyNet | None = None
        self.device = "cpu"
        self.weights_digest: str | None = None
        self.resolved = self._resolve(options)  # a missing file fails now, before any model runs
        self.random_weights = self.resolved.kind == "random"

    @staticmethod
    def _resolve(options: TinyNetBackbone.Options) -> ResolvedWeights:
        w = resolve_weights(options.weights, options.base_dir)
        if w.kind in ("pretrained", "tag"):
            raise WeightsError(
                f"tinynet has no pretrained weights (weights: {options.weights!r}): point weights at a local "
                ".safetensors or .pt state dict of TinyNet, or set weights: random for a smoke test"
            )
        return w

    # ------------------------------------------------------------------ model

    def load(self, device: str = "cpu") -> None:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.options.seed)
            model = TinyNet(self.options.model, self.options.num_classes)
        if self.resolved.kind == "file":
            state = load_state_dict(self.resolved.path)
            load_into(model, state, what=f"tinynet {self.options.model!r} from {self.resolved.path}")
            self.weights_digest = file_digest(self.resolved.path)
        else:
            self.weights_digest = state_dict_digest(model)
        self.model = model.eval().to(device)
        self.device = device

    def _require_model(self) -> TinyNet:
        if self.model is None:
            raise RuntimeError("TinyNetBackbone: call load(device) before using the model")
        return self.model

    def transform(self) -> Callable[[Any], Any]:
        from torchvision import transforms as T

        o = self.options
        return T.Compose([T.Resize(o.img_size), T.CenterCrop(o.img_size), T.ToTensor(), T.Normalize(o.mean, o.std)])

    def features(self, images):
        import torch

        with torch.no_grad():
            return self._require_model().forward_features(images.to(self.device))

    def logits(self, images):
        import torch

        with torch.no_grad():
            return self._require_model()(images.to(self.device))

    def head(self) -> LinearHead:
        import torch

        model = self._require_model()
        weight, bias = model.head.affine()
        eps = float(torch.finfo(model.head.weight.dtype).eps)
        return LinearHead(weight=weight.cpu().numpy(), bias=bias.cpu().numpy(), weight_eps=eps, class_names=self.options.class_names)

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {
            "plugin": self.plugin_name,
            "package": _package(),
            "model": o.model,
            "widths": list(VARIANTS[o.model]),
            "num_classes": o.num_classes,
            **weights_description(self.resolved, self.weights_digest, o.seed),
            "preprocessing": {"img_size": o.img_size, "mean": list(o.mean), "std": list(o.std)},
            "class_names": o.class_names,
        }

