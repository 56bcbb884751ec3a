"""timm image classifiers as backbones: features = the input of the classifier layer.

The head is what ``model.get_classifier()`` returns, folded into one affine map by
:mod:`sing_audit.heads` (a Linear, BiT's 1×1 conv, LeViT's BatchNorm + Linear, a distilled
pair averaged the way timm averages it at inference); the features are read with forward
pre-hooks on that module, so they are exactly what the folded head consumes (VGG's
4096-d pre-logits output; DeiT-distilled's class and distillation tokens side by side).

Weights (``weights:``): ``pretrained`` or a tag (timm fetches them from the hub or its
cache), a local ``.safetensors``/``.pt``/``.pth`` state dict, a local folder in the hub's
layout (``config.json`` + ``model.safetensors``/``pytorch_model.bin``; also reachable as
``model: local-dir:<folder>``), or ``random``. Options are checked when the backbone is
built (:meth:`TimmBackbone.validate`), with no network: unknown names and tags, missing
files, and — when the hub is known to be offline (``HF_HUB_OFFLINE``) — pretrained weights
that are not in the local cache fail there, before any model is built.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from pydantic import Field

from sing_audit.components import ImageBackbone, LinearHead, ModelOptions
from sing_audit.errors import ConfigError, WeightsError, at_field, exception_summary
from sing_audit.head_inputs import head_features
from sing_audit.heads import FoldedHead, HeadFolders
from sing_audit.hookspecs import hookimpl
from sing_audit.host import BuildContext
from sing_audit.store import jsonable
from sing_audit.weights import (
    ResolvedWeights,
    file_digest,
    hub_offline,
    load_into,
    load_state_dict,
    state_dict_digest,
    weights_description,
)

from .classes import imagenet_class_info
from .heads import TIMM_HEAD_FOLDERS, fold_timm_head
from .model_name import TimmModelName
from .pretrained import arch_data_config, arch_pretrained_cfg, check_cached, check_has_weights, classifier_keys

__all__ = ["TimmBackbone"]

class TimmBackbone(TimmModelName, ImageBackbone):
    """A timm classifier; ``features`` is the input of its (folded) classification head."""

    class Options(ModelOptions):
        model: str = Field(
            min_length=1,
            description="timm model name, optionally with a tag (resnet50.a1_in1k), or local-dir:<hub-layout folder>",
        )
        weights: str = Field(
            "pretrained",
            description="pretrained | random | <hub tag> | <local .safetensors/.pt/.pth file> | <hub-layout folder>",
        )
        img_size: int | None = Field(None, ge=8, description="input size override (square), e.g. for small tests")

    plugin_name = "timm"

    def __init__(self, options: TimmBackbone.Options | dict[str, Any], context: BuildContext | None = None) -> None:
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
        self._folded: FoldedHead | None = None
        self._folder_cfgs: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {}
        # timm's own head modules, and whatever other plugins registered (those win)
        self.head_folders: HeadFolders = {**TIMM_HEAD_FOLDERS, **(context.registry.head_folders() if context else {})}
        self.validate()

    # ------------------------------------------------------------------ validation (no network, no model)

    def validate(self) -> None:
        """Check the options without building the model or touching the network.

        Raises :class:`ConfigError` for an unknown model name, :class:`WeightsError` for an
        unknown or conflicting tag, a missing file or folder, an architecture without
        pretrained weights, a hub folder saved from another architecture, and — only when
        the hub is known to be offline (``HF_HUB_OFFLINE``) — pretrained weights that are
        not in the local cache. Called by the constructor, so the host fails at
        validation time; safe to call again.
        """
        with at_field("model"):
            self._check_model_name()
        with at_field("weights"):
            w = self.resolved_weights
            if w.kind == "file" and w.folder is not None and self._local_dir() is None:
                self._check_folder_architecture(w.folder)
            if self.hub_id() is not None and hub_offline():
                # the revision must be in the cache: its commit names the snapshot to read
                self.pinned_name(self.options.model)
            if w.kind in ("pretrained", "tag"):
                name = self._pretrained_name()
                check_has_weights(name)
                if hub_offline():
                    check_cached(self.pinned_name(name))

    def declared_classes(self) -> tuple[int, list[str] | None, list[str] | None] | None:
        """The head's classes from timm's pretrained config of the model (``num_classes``;
        ImageNet names and synsets for an ImageNet-sized head), without weights. ``None``
        for a weights file or a hub folder, whose head size only the file tells. Read from
        what the installed timm version declares (:mod:`sing_audit.name_lists`: no import)."""
        w = self.resolved_weights
        if w.kind == "file" or self.options.model.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
            return None
        cfg = arch_pretrained_cfg(self._pretrained_name() if w.kind == "tag" else self.options.model)
        count = cfg.get("num_classes") if cfg is not None else None
        if not count:
            return None
        info = imagenet_class_info(int(count))
        return (int(count), list(info[1]), list(info[0])) if info is not None else (int(count), None, None)

    def declared_feature_dim(self) -> int | None:
        """The width of the classifier's input, read from the architecture built on the ``meta``
        device (no weights, no images, no network: an ``hf-hub:`` model only when its config
        is cached): :func:`~sing_audit.heads.head_input_width` of ``get_classifier()``. ``None``
        when that cannot tell — a distilled pair of heads, whose shared input takes a forward
        pass to find — or when the architecture does not build here; the run then checks."""
        import torch

        from sing_audit.heads import head_input_width

        hub = self.hub_id()
        if hub is not None:
            from sing_audit.weights import hub_cached_commit

            commit = self._hub_commit or hub_cached_commit(hub[0], hub[1])
            if commit is None:
                return None
            name = f"hf-hub:{hub[0]}@{commit}"
        else:
            name = self._build_name()
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                model = self._create(name, pretrained=False)
            clf = model.get_classifier() if hasattr(model, "get_classifier") else None
        except Exception:  # noqa: BLE001 - an architecture that does not build on meta: the run will tell
            return None
        return head_input_width(clf) if clf is not None else None

    # ------------------------------------------------------------------ building

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
                cfg = self._pretrained_cfg()
                fixed = bool(cfg.get("fixed_input_size", False))
                if fixed:
                    raise ConfigError(
                        f"timm model {model_name!r} has a fixed input size and does not accept img_size "
                        f"({size}); remove img_size or choose an architecture that takes it (e.g. a ViT)"
                    ) from exc
                # Convolutional models take any input size: img_size only changes the transform.
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)

    def _create_offline(self, name: str, **kwargs: Any):
        """Build without pretrained weights; a hub-hosted model still needs its config from the hub
        (at the resolved commit)."""
        name = self.pinned_name(name)
        try:
            return self._create(name, pretrained=False, **kwargs)
        except (ConfigError, WeightsError):
            raise
        except Exception as exc:
            if name.startswith(("hf-hub:", "hf_hub:")):
                raise WeightsError(
                    f"the configuration of hub model {name!r} could not be fetched ({exception_summary(exc)}); "
                    "without network access use the plain timm architecture name instead"
                ) from exc
            raise

    def _hub_error(self, name: str, exc: Exception) -> WeightsError:
        return WeightsError(
            f"the pretrained weights of timm model {name!r} could not be fetched or loaded "
            f"({exception_summary(exc)}); without network access, download them elsewhere and set "
            "weights: <local file> (or a hub-layout folder), or set weights: random for a smoke test "
            "(never a silent fallback)"
        )

    def _build_name(self) -> str:
        """The name handed to timm for building the architecture (folders as ``local-dir:``)."""
        local = self._local_dir()
        if local is not None:
            return f"local-dir:{local}"
        w = self.resolved_weights
        if w.kind == "file" and w.folder is not None:
            return f"local-dir:{w.folder}"
        return self.options.model

    def load(self, device: str = "cpu") -> None:
        import torch

        self.validate()
        w = self.resolved_weights
        if w.kind in ("pretrained", "tag"):
            name = self.pinned_name(self._pretrained_name())
            try:
                model = self._create(name, pretrained=True)
            except (ConfigError, WeightsError):
                raise
            except Exception as exc:
                raise self._hub_error(name, exc) from exc
            self.random_weights = False
        elif w.kind == "file":
            sd = load_state_dict(w.path)
            name = self._build_name()
            kwargs: dict[str, Any] = {}
            keys = [] if name.startswith("local-dir:") else classifier_keys(name)
            if keys:
                wkey = f"{keys[0]}.weight"
                if wkey in sd:
                    kwargs["num_classes"] = int(sd[wkey].shape[0])
                elif not any(k.startswith(f"{c}.") for c in keys for k in sd):
                    kwargs["num_classes"] = 0  # a headless checkpoint
            model = self._create_offline(name, **kwargs)
            load_into(model, sd, what=f"timm model {self.options.model!r} from {w.path}")
            self.random_weights = False
        else:  # random
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.options.seed)
                model = self._create_offline(self._build_name())
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
        self._folded = None

    def _require_model(self):
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}: call load(device) before using the model")
        return self.model

    # ------------------------------------------------------------------ preprocessing

    def _pretrained_cfg(self) -> dict[str, Any]:
        """The pretrained config the preprocessing comes from (no network, no model needed)."""
        if self.model is not None:
            return dict(getattr(self.model, "pretrained_cfg", None) or {})
        local = self._local_dir()
        if local is not None:
            return dict(self._folder_config(local)[0])
        w = self.resolved_weights
        if w.kind == "file" and w.folder is not None:
            return dict(self._folder_config(w.folder)[0])
        if self.hub_id() is not None:
            return self._hub_config()
        try:
            pcfg = arch_pretrained_cfg(self._config_name())
        except Exception:  # an unknown name: no config
            pcfg = None
        return {k: v for k, v in pcfg.items() if k != "has_weights"} if pcfg is not None else {}

    def _config_name(self) -> str | None:
        """The timm name whose registered pretrained config gives the preprocessing before the
        model is built; ``None`` when a folder's or the hub's ``config.json`` gives it."""
        w = self.resolved_weights
        if self._local_dir() is not None or (w.kind == "file" and w.folder is not None) or self.hub_id() is not None:
            return None
        return self._pretrained_name() if w.kind in ("pretrained", "tag") else self.options.model

    def _hub_config(self) -> dict[str, Any]:
        """The pretrained config in an ``hf-hub:`` repository's ``config.json`` at the resolved commit
        (from the cache, else fetched: it is small), so the preprocessing is known before load."""
        from timm.models._hub import load_model_config_from_hf

        name = self.pinned_name(self.options.model)
        key = name
        if key not in self._folder_cfgs:
            try:
                self._folder_cfgs[key] = tuple(load_model_config_from_hf(name.split(":", 1)[1]))  # type: ignore[assignment]
            except Exception as exc:
                raise WeightsError(
                    f"the config.json of timm model {self.options.model!r} (commit {self.hub_commit()}) could not be "
                    f"read ({exception_summary(exc)}); it is a timm model's config as save_for_hf or push_to_hf_hub "
                    "writes it"
                ) from exc
        return dict(self._folder_cfgs[key][0])

    def pretrained_cfg_name(self) -> str | None:
        """``architecture.tag`` of the pretrained config the preprocessing comes from (e.g. ``vgg16.tv_in1k``).

        For a hub-layout folder, ``local-dir:<folder>``; ``None`` when unknown (an
        ``hf-hub:`` name before its config is fetched).
        """
        local = self._local_dir()
        w = self.resolved_weights
        folder = local if local is not None else (w.folder if w.kind == "file" else None)
        if folder is not None:
            return f"local-dir:{folder}"
        cfg = self._pretrained_cfg()
        arch, tag = cfg.get("architecture"), cfg.get("tag")
        if not arch:
            return None
        return f"{arch}.{tag}" if tag else str(arch)

    def data_config(self) -> dict[str, Any]:
        """timm's resolved eval data config (input_size, interpolation, mean, std, crop_pct, crop_mode)."""
        if self._data_config is None:
            if self.model is not None:
                from timm.data import resolve_data_config

                cfg = resolve_data_config(model=self.model)
            else:
                self._check_model_name()
                name = self._config_name()
                if name is not None:  # what timm registers for the name, read without importing timm
                    cfg = arch_data_config(name)
                else:
                    from timm.data import resolve_data_config

                    cfg = resolve_data_config(pretrained_cfg=self._pretrained_cfg())
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

    # ------------------------------------------------------------------ head and features

    def folded_head(self) -> FoldedHead:
        """The classifier folded into one affine map, with the modules whose inputs are the features."""
        model = self._require_model()
        if self._folded is None:
            size = tuple(self.data_config().get("input_size", (3, 224, 224)))
            self._folded = fold_timm_head(model, self.options.model, size, self.device, self.head_folders)
        return self._folded

    def features(self, images):
        import torch

        model = self._require_model()
        head = self.folded_head()
        with torch.no_grad():
            f, _ = head_features(model, head, images.to(self.device))
        return f

    def logits(self, images):
        import torch

        model = self._require_model()
        with torch.no_grad():
            return model(images.to(self.device))

    def head(self) -> LinearHead:
        folded = self.folded_head()
        c = folded.num_classes
        info = imagenet_class_info(c)
        keys, names = (list(info[0]), list(info[1])) if info is not None else (None, None)
        return LinearHead(
            weight=folded.weight.copy(),
            bias=folded.bias.copy(),
            weight_eps=folded.weight_eps,
            class_names=names,
            class_keys=keys,
        )

    # ------------------------------------------------------------------ provenance

    def describe(self) -> dict[str, Any]:
        w = self.resolved_weights
        out: dict[str, Any] = {
            "plugin": self.plugin_name,
            "model": self.options.model,
            **weights_description(w, self.weights_digest, self.options.seed),
            "resolved_tag": self._resolved_tag,
            "hub_revision": self.hub_revision(),
            "img_size": self.options.img_size,
            "pretrained_cfg": self.pretrained_cfg_name(),
            "preprocessing": jsonable(self.data_config()),
            "timm_version": metadata.version("timm"),
        }
        folder = self._local_dir() or (w.folder if w.kind == "file" else None)
        if folder is not None and (folder / "config.json").is_file():
            out["config_digest"] = file_digest(folder / "config.json")
        return out


@hookimpl
def register_backbones(register):
    register("timm", TimmBackbone)
