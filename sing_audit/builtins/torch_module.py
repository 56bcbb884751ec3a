"""Any PyTorch classifier built by a factory function, with the head named by its module path.

``model: torchvision.models:resnet18`` (``package.module:function``, called with
``kwargs``) builds the network; ``head: fc`` (a dotted path as in ``named_modules()``,
e.g. ``classifier.6``) names its classification layer. The features are the head's real
input, captured by a forward pre-hook while the whole model runs (flattened when it is a
pooled ``B×C×1×1`` map), so they are what the head sees whatever the forward pass does.
The head is folded into one affine map by :func:`sing_audit.heads.affine_of`: an
``nn.Linear``, a 1×1 ``nn.Conv2d``, or a ``Sequential`` chain of them with eval-mode
BatchNorm1d, Flatten, Dropout and Identity; a head that normalises its input is refused.

``weights``: ``random`` (explicit; seeded), a local file (safetensors, or ``.pt``/``.pth``
read without pickle) loaded strictly, or ``factory`` — the model as the factory returns
it, for factories that load trained weights themselves (e.g. ``kwargs: {weights:
IMAGENET1K_V1}`` for torchvision; recorded as trained weights, so only use it then).
There is no default: the choice is always explicit.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sing_audit.components import ImageBackbone, LinearHead, ModelOptions
from sing_audit.errors import ConfigError, HeadError, WeightsError
from sing_audit.hookspecs import hookimpl
from sing_audit.store import jsonable
from sing_audit.weights import (
    ResolvedWeights,
    file_digest,
    load_into,
    load_state_dict,
    resolve_weights,
    state_dict_digest,
    weights_description,
)

__all__ = ["HookedHeadBackbone", "TorchModuleBackbone", "find_head_layer", "import_factory", "linear_head_from"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)




# --------------------------------------------------------------------------- heads


def find_head_layer(model, path: str, what: str):
    """``(module, Affine)``: the head module at dotted ``path`` and its fold.

    Folding is :func:`sing_audit.heads.affine_of`: Linear, 1×1 Conv2d, eval BatchNorm1d
    and Sequential chains of them with Flatten/Dropout/Identity; anything else (a head
    that normalises its input, a custom module) raises :class:`HeadError`.
    """
    from sing_audit.heads import affine_of

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
        affine = affine_of(module)
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
    from sing_audit.builtins.timm_backbone import imagenet_class_info

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

    def __init__(self, options) -> None:
        """Validate ``options`` with the subclass's ``Options``; nothing is built yet."""
        if not isinstance(options, self.Options):
            options = self.Options.model_validate(options)
        self.options = options
        self.weights_digest: str | None = None
        self._resolved: ResolvedWeights | None = None
        self.random_weights = options.weights.strip().lower() == "random"

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
        from sing_audit.heads import head_inputs

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


# --------------------------------------------------------------------------- factories


def import_factory(spec: str, base_dir: Path | None = None) -> Callable[..., Any]:
    """``package.module:function`` (or ``module:Class.method``) -> the callable.

    A module that is not importable but sits next to the config (``base_dir``) is
    imported from there.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"model {spec!r} is not an import path to a factory: write package.module:function "
            "(e.g. torchvision.models:resnet50)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        local = base_dir is not None and ((Path(base_dir) / f"{top}.py").is_file() or (Path(base_dir) / top).is_dir())
        if exc.name is not None and exc.name.split(".")[0] == top and local:
            sys.path.insert(0, str(Path(base_dir).resolve()))
            try:
                module = importlib.import_module(module_name)
            except Exception as exc2:
                raise ConfigError(f"cannot import {module_name!r} from {base_dir}: {exc2.__class__.__name__}: {exc2}") from exc2
        else:
            raise ConfigError(
                f"cannot import module {module_name!r} for model {spec!r} ({exc}); install the package, or put the "
                "module next to the config file or on PYTHONPATH"
            ) from exc
    except Exception as exc:
        raise ConfigError(f"importing {module_name!r} for model {spec!r} failed: {exc.__class__.__name__}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            import difflib

            public = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, public, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{module_name!r} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{spec!r} is a {type(obj).__name__}, not a callable factory")
    return obj


def _source_digest(factory) -> dict[str, str] | None:
    """Digest of the file that defines the factory: a cache key that changes with local model code."""
    import inspect

    try:
        path = inspect.getsourcefile(inspect.unwrap(factory))
    except (TypeError, OSError):
        return None
    if not path or not Path(path).is_file():
        return None
    return {"file": str(Path(path).resolve()), "digest": file_digest(path)}


def _package_version(module_name: str) -> str | None:
    from importlib import metadata

    top = module_name.split(".")[0]
    try:
        dists = metadata.packages_distributions().get(top) or []
        return f"{dists[0]} {metadata.version(dists[0])}" if dists else None
    except Exception:  # noqa: BLE001 - provenance only
        return None


class TorchModuleBackbone(HookedHeadBackbone):
    """A model from ``package.module:function``; features are its head's input."""

    class Options(ModelOptions):
        model: str = Field(min_length=1, description="factory import path, package.module:function")
        kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")
        head: str = Field(min_length=1, description="dotted path of the classification layer (fc, classifier.6)")
        weights: str = Field(description="random | <local weights file> | factory (the factory's own trained weights)")
        img_size: int = Field(224, ge=8, description="centre-crop size")
        resize_size: int | None = Field(None, ge=8, description="short side before the crop (default img_size/0.875)")
        interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
        mean: tuple[float, float, float] = IMAGENET_MEAN
        std: tuple[float, float, float] = IMAGENET_STD
        class_names: list[str] | None = Field(None, description="readable name per head index")

    plugin_name = "torch_module"

    def __init__(self, options: TorchModuleBackbone.Options | dict[str, Any]) -> None:
        super().__init__(options)
        self.head_path = self.options.head
        self.validate()

    def validate(self) -> None:
        """Resolve the weights and import the factory (no model is built): errors at validation time."""
        _ = self.resolved_weights
        import_factory(self.options.model, self.options.base_dir)

    @property
    def resolved_weights(self) -> ResolvedWeights:
        if self._resolved is None:
            spec = self.options.weights.strip()
            low = spec.lower()
            if low == "factory":
                self._resolved = ResolvedWeights("factory", "factory")
            elif low == "pretrained":
                raise WeightsError(
                    "torch_module has no pretrained registry: set weights to a local weights file, to factory when "
                    "the factory loads trained weights itself (e.g. kwargs: {weights: IMAGENET1K_V1}), or to random "
                    "for a smoke test"
                )
            else:
                w = resolve_weights(spec, self.options.base_dir)
                if w.kind == "tag":
                    raise WeightsError(
                        f"weights {spec!r} is neither random, factory, nor an existing file; torch_module "
                        "knows no tags (pass the factory's own weight names through kwargs and set weights: factory)"
                    )
                self._resolved = w
        return self._resolved

    def _what(self) -> str:
        return f"model {self.options.model!r}"

    def _build(self):
        import torch

        factory = import_factory(self.options.model, self.options.base_dir)
        try:
            model = factory(**self.options.kwargs)
        except TypeError as exc:
            raise ConfigError(f"calling {self.options.model} with kwargs {self.options.kwargs} failed: {exc}") from exc
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"{self.options.model} returned a {type(model).__name__}, not a torch.nn.Module")
        return model

    def load(self, device: str = "cpu") -> None:
        import torch

        w = self.resolved_weights
        if w.kind == "factory":
            model = self._build()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.options.seed)
                model = self._build()
            if w.kind == "file":
                load_into(model, load_state_dict(w.path), what=f"{self.options.model} from {w.path}")
        self.random_weights = w.kind == "random"
        model.eval().to(device)
        self.head_module, self.head_affine = find_head_layer(model, self.options.head, self._what())
        self.model = model
        self.device = device
        self.weights_digest = file_digest(w.path) if w.kind == "file" else state_dict_digest(model)

    def _class_names(self) -> list[str] | None:
        names = self.options.class_names
        if names is not None and self.head_affine is not None:
            c = int(self.head_affine.weight.shape[0])
            if len(names) != c:
                raise ConfigError(f"class_names has {len(names)} names but the head {self.head_path!r} has {c} classes")
        return names

    def preprocessing(self) -> dict[str, Any]:
        o = self.options
        return {
            "resize": o.resize_size or int(o.img_size / 0.875),
            "interpolation": o.interpolation,
            "crop": o.img_size,
            "mean": list(o.mean),
            "std": list(o.std),
        }

    def transform(self) -> Callable[[Any], Any]:
        from torchvision import transforms as T

        p = self.preprocessing()
        mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
                "nearest": T.InterpolationMode.NEAREST}[p["interpolation"]]
        return T.Compose([
            T.Resize(p["resize"], interpolation=mode),
            T.CenterCrop(p["crop"]),
            T.ToTensor(),
            T.Normalize(p["mean"], p["std"]),
        ])

    def describe(self) -> dict[str, Any]:
        import torch

        w = self.resolved_weights
        module_name = self.options.model.partition(":")[0]
        out: dict[str, Any] = {
            "plugin": self.plugin_name,
            "model": self.options.model,
            "kwargs": jsonable(self.options.kwargs, repr),
            "head": self.options.head,
            **weights_description(w, self.weights_digest, self.options.seed),
            "preprocessing": self.preprocessing(),
            "class_names": self.options.class_names,
            "package": _package_version(module_name),
            "factory_source": _source_digest(import_factory(self.options.model, self.options.base_dir)),
            "torch_version": torch.__version__,
        }
        return out


@hookimpl
def register_backbones(register):
    register("torch_module", TorchModuleBackbone)
