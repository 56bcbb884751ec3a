"""timm image classifiers as backbones: features = the input of the classifier layer."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from sing_audit.components import ImageBackbone, LinearHead, ModelOptions
from sing_audit.errors import ConfigError, HeadError, WeightsError
from sing_audit.hookspecs import hookimpl
from sing_audit.weights import (
    ResolvedWeights,
    file_digest,
    load_into,
    load_state_dict,
    resolve_weights,
    state_dict_digest,
)

__all__ = ["TimmBackbone", "imagenet_class_info"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@functools.lru_cache(maxsize=8)
def imagenet_class_info(num_classes: int) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """``(synsets, readable names)`` for an ImageNet-sized head, else ``None``.

    Readable names are the first comma-separated part of timm's description
    (``"tench, Tinca tinca"`` -> ``"tench"``).
    """
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    if info.num_classes() != num_classes:
        return None
    keys = tuple(info.index_to_label_name(i) for i in range(num_classes))
    names = tuple(info.index_to_description(i).split(",")[0].strip() for i in range(num_classes))
    return keys, names


class TimmBackbone(ImageBackbone):
    """A timm classifier; ``features`` is ``forward_head(..., pre_logits=True)``."""

    class Options(ModelOptions):
        model: str = Field(min_length=1, description="timm model name, optionally with a tag (resnet50.a1_in1k)")
        img_size: int | None = Field(None, ge=8, description="input size override (square), e.g. for small tests")

    plugin_name = "timm"

    def __init__(self, options: "TimmBackbone.Options | dict[str, Any]") -> None:
        if not isinstance(options, self.Options):
            options = self.Options.model_validate(options)
        self.options = options
        self.model = None
        self.device = "cpu"
        self.random_weights = options.weights.strip().lower() == "random"
        self.weights_digest: str | None = None
        self._resolved: ResolvedWeights | None = None
        self._data_config: dict[str, Any] | None = None
        self._resolved_tag: str | None = None

    # ------------------------------------------------------------------ building

    @property
    def resolved_weights(self) -> ResolvedWeights:
        if self._resolved is None:
            self._resolved = resolve_weights(self.options.weights, self.options.base_dir)
        return self._resolved

    def _arch_and_tag(self) -> tuple[str, str | None]:
        name = self.options.model
        if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
            return name, None
        arch, _, tag = name.partition(".")
        return arch, (tag or None)

    def _check_model_name(self) -> None:
        import timm

        name = self.options.model
        if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
            return
        arch, tag = self._arch_and_tag()
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
            raise ConfigError(f"timm has no model named {arch!r}{hint}")
        if tag is not None:
            self._check_tag(arch, tag)

    def _check_tag(self, arch: str, tag: str) -> None:
        import timm

        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        if tag not in tags:
            close = difflib.get_close_matches(tag, tags, n=5, cutoff=0.5)
            listing = ", ".join(close or tags[:10]) or "none"
            raise WeightsError(
                f"timm model {arch!r} has no pretrained tag {tag!r} (known tags: {listing}); "
                "use one of them, weights: pretrained, a local weights file, or weights: random"
            )

    @staticmethod
    def _check_has_weights(model_name: str) -> None:
        import timm

        if model_name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
            return
        cfg = timm.models.get_pretrained_cfg(model_name)
        if cfg is None or not cfg.has_weights:
            raise WeightsError(
                f"timm has no pretrained weights for {model_name!r}; set weights to a local weights file, "
                "or to random for a smoke test"
            )

    def _create(self, model_name: str, *, pretrained: bool, **kwargs: Any):
        """``timm.create_model`` with img_size where the architecture takes it."""
        import timm

        size = self.options.img_size
        if size is not None:
            try:
                return timm.create_model(model_name, pretrained=pretrained, img_size=size, **kwargs)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
                cfg = timm.models.get_pretrained_cfg(model_name)
                fixed = bool(getattr(cfg, "fixed_input_size", False)) if cfg is not None else False
                if fixed:
                    raise ConfigError(
                        f"timm model {model_name!r} has a fixed input size and does not accept img_size "
                        f"({size}); remove img_size or choose an architecture that takes it (e.g. a ViT)"
                    ) from exc
                # Convolutional models take any input size: img_size only changes the transform.
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)

    def _create_offline(self, name: str, **kwargs: Any):
        """Build without pretrained weights; a hub-hosted model still needs its config from the hub."""
        try:
            return self._create(name, pretrained=False, **kwargs)
        except (ConfigError, WeightsError):
            raise
        except Exception as exc:
            if name.startswith(("hf-hub:", "hf_hub:")):
                detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                raise WeightsError(
                    f"the configuration of hub model {name!r} could not be fetched ({exc.__class__.__name__}: "
                    f"{detail}); without network access use the plain timm architecture name instead"
                ) from exc
            raise

    def _hub_error(self, name: str, exc: Exception) -> WeightsError:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return WeightsError(
            f"the pretrained weights of timm model {name!r} could not be fetched or loaded "
            f"({exc.__class__.__name__}: {detail}); without network access, download them elsewhere and set "
            "weights: <local file>, or set weights: random for a smoke test (never a silent fallback)"
        )

    @staticmethod
    def _classifier_keys(model_name: str) -> list[str]:
        import timm

        try:
            cfg = timm.models.get_pretrained_cfg(model_name)
        except Exception:  # hf-hub names, unknown tags: no local config to read
            cfg = None
        classifier = getattr(cfg, "classifier", None) if cfg is not None else None
        if classifier is None:
            return []
        if isinstance(classifier, str):
            return [classifier]
        return [str(c) for c in classifier]

    def load(self, device: str = "cpu") -> None:
        import torch

        self._check_model_name()
        w = self.resolved_weights
        name = self.options.model
        if w.kind in ("pretrained", "tag"):
            if w.kind == "tag":
                if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
                    raise WeightsError(
                        f"model {name!r} names its weights itself; a tag ({w.value!r}) cannot be combined with it: "
                        "use weights: pretrained"
                    )
                arch, own_tag = self._arch_and_tag()
                if own_tag is not None and own_tag != w.value:
                    raise WeightsError(
                        f"model {name!r} already names tag {own_tag!r} but weights asks for {w.value!r}; "
                        f"give the tag in one place only"
                    )
                self._check_tag(arch, w.value)
                name = f"{arch}.{w.value}"
            self._check_has_weights(name)
            try:
                model = self._create(name, pretrained=True)
            except (ConfigError, WeightsError):
                raise
            except Exception as exc:
                raise self._hub_error(name, exc) from exc
            self.random_weights = False
        elif w.kind == "file":
            sd = load_state_dict(w.path)
            kwargs: dict[str, Any] = {}
            keys = self._classifier_keys(name)
            if keys:
                wkey = f"{keys[0]}.weight"
                if wkey in sd:
                    kwargs["num_classes"] = int(sd[wkey].shape[0])
                elif not any(k.startswith(f"{c}.") for c in keys for k in sd):
                    kwargs["num_classes"] = 0  # a headless checkpoint
            model = self._create_offline(name, **kwargs)
            load_into(model, sd, what=f"timm model {name!r} from {w.path}")
            self.random_weights = False
        else:  # random
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.options.seed)
                model = self._create_offline(name)
            self.random_weights = True

        model.eval()
        model.to(device)
        self.model = model
        self.device = device
        self._resolved_tag = (
            (getattr(model, "pretrained_cfg", None) or {}).get("tag") if w.kind in ("pretrained", "tag") else None
        )
        self.weights_digest = file_digest(w.path) if w.kind == "file" else state_dict_digest(model)
        self._data_config = None

    def _require_model(self):
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}: call load(device) before using the model")
        return self.model

    # ------------------------------------------------------------------ preprocessing

    def data_config(self) -> dict[str, Any]:
        """timm's resolved eval data config (input_size, interpolation, mean, std, crop_pct, crop_mode)."""
        if self._data_config is None:
            from timm.data import resolve_data_config

            if self.model is not None:
                cfg = resolve_data_config(model=self.model)
            else:
                import timm

                self._check_model_name()
                try:
                    pcfg = timm.models.get_pretrained_cfg(self.options.model)
                except Exception:  # hf-hub names: the config comes with the weights
                    pcfg = None
                cfg = resolve_data_config(pretrained_cfg=pcfg.to_dict() if pcfg is not None else {})
            cfg = dict(cfg)
            if self.options.img_size is not None:
                channels = cfg.get("input_size", (3,))[0]
                cfg["input_size"] = (channels, self.options.img_size, self.options.img_size)
            if self.model is None:
                return cfg
            self._data_config = cfg
        return dict(self._data_config)

    def transform(self) -> Callable[[Any], Any]:
        from timm.data import create_transform

        return create_transform(**self.data_config(), is_training=False)

    # ------------------------------------------------------------------ forward

    def features(self, images):
        import torch

        model = self._require_model()
        with torch.no_grad():
            x = images.to(self.device)
            f = model.forward_head(model.forward_features(x), pre_logits=True)
            return f.reshape(f.shape[0], -1)

    def logits(self, images):
        import torch

        model = self._require_model()
        with torch.no_grad():
            return model(images.to(self.device))

    # ------------------------------------------------------------------ head

    def head(self) -> LinearHead:
        import torch
        from torch import nn

        model = self._require_model()
        name = self.options.model
        clf = model.get_classifier() if hasattr(model, "get_classifier") else None
        if clf is None or isinstance(clf, nn.Identity) or getattr(model, "num_classes", 1) == 0:
            raise HeadError(
                f"model {name!r} has no classification head (num_classes=0): there is no linear map whose null "
                "space could be audited; use a checkpoint with its classifier, or a model built with num_classes > 0"
            )
        if isinstance(clf, nn.Linear):
            weight = clf.weight.detach()
            bias = None if clf.bias is None else clf.bias.detach()
        elif isinstance(clf, nn.Conv2d) and tuple(clf.kernel_size) == (1, 1) and clf.groups == 1 and (
            tuple(clf.padding) == (0, 0) if not isinstance(clf.padding, str) else clf.padding == "valid"
        ):
            weight = clf.weight.detach().reshape(clf.out_channels, clf.in_channels)
            bias = None if clf.bias is None else clf.bias.detach()
        else:
            kind = type(clf).__name__
            if isinstance(clf, (tuple, list)):
                kind = f"{type(clf).__name__} of {', '.join(type(c).__name__ for c in clf)}"
            raise HeadError(
                f"model {name!r} has a classifier of type {kind}, not a single nn.Linear or 1×1 nn.Conv2d, "
                "so sing-audit cannot read it as one affine map (distilled, normalising or multi-layer heads "
                "are not supported yet); audit a model with a plain linear head, or export its features and "
                "an equivalent head and use the precomputed backbone"
            )
        eps = float(torch.finfo(weight.dtype).eps) if weight.dtype.is_floating_point else float(
            torch.finfo(torch.float32).eps
        )
        w64 = weight.to("cpu", torch.float64).numpy().copy()
        b64 = None if bias is None else bias.to("cpu", torch.float64).numpy().copy()
        c = w64.shape[0]
        info = imagenet_class_info(c)
        keys, names = (list(info[0]), list(info[1])) if info is not None else (None, None)
        return LinearHead(weight=w64, bias=b64, weight_eps=eps, class_names=names, class_keys=keys)

    # ------------------------------------------------------------------ provenance

    def describe(self) -> dict[str, Any]:
        import timm

        w = self.resolved_weights
        out: dict[str, Any] = {
            "plugin": self.plugin_name,
            "model": self.options.model,
            "weights": w.as_dict(),
            "resolved_tag": self._resolved_tag,
            "weights_digest": self.weights_digest if self.weights_digest else (
                file_digest(w.path) if w.kind == "file" else None
            ),
            "random_weights": w.kind == "random",
            "img_size": self.options.img_size,
            "preprocessing": _jsonable(self.data_config()),
            "timm_version": timm.__version__,
        }
        if w.kind == "random":
            out["seed"] = self.options.seed
        return out


@hookimpl
def register_backbones(register):
    register("timm", TimmBackbone)
