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

from sing_audit.components import ModelOptions
from sing_audit.errors import ConfigError, WeightsError
from sing_audit.hooked_head import HookedHeadBackbone, find_head_layer
from sing_audit.hookspecs import hookimpl
from sing_audit.host import BuildContext
from sing_audit.imagenet import IMAGENET_MEAN, IMAGENET_STD
from sing_audit.store import jsonable
from sing_audit.transforms import resize_crop_transform
from sing_audit.terminal import close_matches
from sing_audit.weights import (
    ResolvedWeights,
    file_digest,
    load_into,
    load_state_dict,
    resolve_weights,
    state_dict_digest,
    weights_description,
)

__all__ = ["TorchModuleBackbone", "import_factory"]


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
            public = [n for n in dir(obj) if not n.startswith("_")]
            close = close_matches(part, public, n=3, cutoff=0.6)
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

    def __init__(self, options: TorchModuleBackbone.Options | dict[str, Any], context: BuildContext | None = None) -> None:
        super().__init__(options, context)
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
        self.head_module, self.head_affine = find_head_layer(model, self.options.head, self._what(), self.head_folders)
        self.model = model
        self.device = device
        self.weights_digest = file_digest(w.path) if w.kind == "file" else state_dict_digest(model)

    def declared_classes(self) -> tuple[int, list[str] | None, list[str] | None] | None:
        """The head's classes as the config's ``class_names`` declare them (the pre-flight
        maps the dataset's labels onto them before the model is built); ``None`` without
        ``class_names``: only the built model tells its head's size."""
        names = self.options.class_names
        return None if names is None else (len(names), list(names), None)

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
        p = self.preprocessing()
        return resize_crop_transform(p["resize"], p["crop"], p["mean"], p["std"], p["interpolation"])

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
