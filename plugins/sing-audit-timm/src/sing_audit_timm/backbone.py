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

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from sing_audit.components import ImageBackbone, LinearHead, ModelOptions
from sing_audit.errors import ConfigError, HeadError, WeightsError, exception_summary
from sing_audit.heads import (
    FoldedHead,
    HeadFolders,
    fold_head,
    head_features,
    head_modules,
    probe_shared_input,
)
from sing_audit.hookspecs import hookimpl
from sing_audit.host import BuildContext
from sing_audit.store import jsonable
from sing_audit.weights import (
    ResolvedWeights,
    file_digest,
    find_weights_in_folder,
    hub_cached_file,
    hub_offline,
    load_into,
    load_state_dict,
    local_weights_hint,
    resolve_weights,
    state_dict_digest,
    weights_description,
)

from .classes import imagenet_class_info
from .heads import TIMM_HEAD_FOLDERS

__all__ = ["TimmBackbone"]

_SOURCE_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


class TimmBackbone(ImageBackbone):
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
        self._check_model_name()
        w = self.resolved_weights
        if w.kind == "file" and w.folder is not None and self._local_dir() is None:
            self._check_folder_architecture(w.folder)
        if w.kind in ("pretrained", "tag"):
            name = self._pretrained_name()
            self._check_has_weights(name)
            if hub_offline():
                self._check_cached(name)

    def _local_dir(self) -> Path | None:
        """The folder of a ``local-dir:`` model name, resolved from the config's folder."""
        name = self.options.model
        if not name.startswith("local-dir:"):
            return None
        raw = name[len("local-dir:"):].strip()
        if not raw:
            raise ConfigError("model 'local-dir:' names no folder; write model: local-dir:<folder with config.json>")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = (Path(self.options.base_dir) if self.options.base_dir is not None else Path.cwd()) / path
        return path.resolve()

    def _folder_config(self, folder: Path) -> tuple[dict[str, Any], str, dict[str, Any]]:
        """``(pretrained_cfg, architecture, model_args)`` from a hub-layout folder's ``config.json``."""
        key = str(folder)
        if key not in self._folder_cfgs:
            from timm.models._hub import load_model_config_from_path

            cfg_file = folder / "config.json"
            if not folder.is_dir():
                raise WeightsError(f"model folder not found: {folder}")
            if not cfg_file.is_file():
                raise WeightsError(
                    f"folder {folder} has no config.json: a folder in the hub's layout holds config.json and "
                    "model.safetensors (or pytorch_model.bin); point weights at the weights file itself instead, "
                    "with model: <timm architecture>"
                )
            try:
                pcfg, arch, model_args = load_model_config_from_path(folder)
            except Exception as exc:
                raise WeightsError(
                    f"{cfg_file} is not a timm model config ({exc.__class__.__name__}: {exc}); it needs at least "
                    "'architecture' (as timm's save_for_hf writes it)"
                ) from exc
            self._folder_cfgs[key] = (dict(pcfg), str(arch), dict(model_args or {}))
        return self._folder_cfgs[key]

    def _check_folder_architecture(self, folder: Path) -> None:
        import timm

        _, folder_arch, _ = self._folder_config(folder)
        arch, _ = self._arch_and_tag()
        folder_base = folder_arch.partition(".")[0]
        if not timm.is_model(folder_base):
            raise WeightsError(f"{folder / 'config.json'} names architecture {folder_arch!r}, which timm does not know")
        if folder_base != arch:
            raise WeightsError(
                f"weights folder {folder} holds a {folder_base!r} (its config.json) but model is {arch!r}; set "
                f"model: {folder_base}, or model: local-dir:{folder}"
            )

    @property
    def resolved_weights(self) -> ResolvedWeights:
        if self._resolved is None:
            local = self._local_dir()
            if local is not None and self.options.weights.strip().lower() == "pretrained":
                # a local-dir model brings its own weights: the folder's weights file
                self._resolved = ResolvedWeights("file", f"local-dir:{local}", find_weights_in_folder(local), folder=local)
            else:
                self._resolved = resolve_weights(self.options.weights, self.options.base_dir)
        return self._resolved

    def _arch_and_tag(self) -> tuple[str, str | None]:
        name = self.options.model
        local = self._local_dir()
        if local is not None:
            _, arch, _ = self._folder_config(local)
            return arch.partition(".")[0], None
        if name.startswith(("hf-hub:", "hf_hub:")):
            return name, None
        arch, _, tag = name.partition(".")
        return arch, (tag or None)

    def _check_model_name(self) -> None:
        import timm

        name = self.options.model
        local = self._local_dir()
        if local is not None:
            self._folder_config(local)
            arch, _ = self._arch_and_tag()
            if not timm.is_model(arch):
                raise WeightsError(f"{local / 'config.json'} names architecture {arch!r}, which timm does not know")
            return
        if name.startswith(("hf-hub:", "hf_hub:")):
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

    def _pretrained_name(self) -> str:
        """The timm name whose pretrained weights ``weights: pretrained`` or ``weights: <tag>`` loads."""
        w = self.resolved_weights
        name = self.options.model
        if w.kind != "tag":
            return name
        if name.startswith(_SOURCE_PREFIXES):
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
        return f"{arch}.{w.value}"

    @staticmethod
    def _check_has_weights(model_name: str) -> None:
        import timm

        if model_name.startswith(_SOURCE_PREFIXES):
            return
        cfg = timm.models.get_pretrained_cfg(model_name)
        if cfg is None or not cfg.has_weights:
            raise WeightsError(
                f"timm has no pretrained weights for {model_name!r}; set weights to a local weights file, "
                "or to random for a smoke test"
            )

    @staticmethod
    def _cached_weights(model_name: str) -> tuple[Path | None, str]:
        """Where timm would find ``model_name``'s pretrained weights on this machine, without a network.

        Mirrors timm 1.0's ``_resolve_pretrained_source``: a ``file`` wins; else the hub
        repository (``hf_hub_id``, file ``hf_hub_filename`` or ``pytorch_model.bin``, with
        its safetensors alternative tried first); else the ``url`` in timm's torch-hub cache.
        Returns ``(path or None, what was looked for)``.
        """
        import timm
        import torch
        from timm.models import _builder

        if model_name.startswith(("hf-hub:", "hf_hub:")):
            repo = model_name.split(":", 1)[1]
            names = ("model.safetensors", "pytorch_model.bin")
            if hub_cached_file(repo, "config.json") is None:
                return None, f"config.json of hub repository {repo}"
            return hub_cached_file(repo, names), f"{' or '.join(names)} of hub repository {repo}"
        cfg = timm.models.get_pretrained_cfg(model_name)
        if cfg is None:
            return None, f"a pretrained config for {model_name!r}"
        if cfg.file:
            path = Path(cfg.file)
            return (path if path.is_file() else None), str(path)
        # timm's torch-hub cache (timm.models._hub.get_cache_dir, which would create the folder)
        url_dir = Path(torch.hub.get_dir()) / "checkpoints"
        url_file = url_dir / Path(str(cfg.url).split("?")[0]).name if cfg.url else None
        url_cached = url_file if url_file is not None and url_file.is_file() else None
        if url_cached is not None and (not cfg.hf_hub_id or getattr(_builder, "_USE_OLD_CACHE", False)):
            return url_cached, str(url_file)
        if cfg.hf_hub_id:
            filename = cfg.hf_hub_filename or "pytorch_model.bin"
            names = [filename]
            if filename == "pytorch_model.bin":
                names.insert(0, "model.safetensors")
            elif filename == "open_clip_pytorch_model.bin":
                names.insert(0, "open_clip_model.safetensors")
            elif filename.endswith(".bin"):
                names.insert(0, filename[: -len(".bin")] + ".safetensors")
            return hub_cached_file(cfg.hf_hub_id, tuple(names)), f"{' or '.join(names)} of hub repository {cfg.hf_hub_id}"
        if url_file is not None:
            return None, str(url_file)
        return None, "a weights source"

    def _check_cached(self, model_name: str) -> None:
        found, looked = self._cached_weights(model_name)
        if found is not None:
            return
        try:
            from huggingface_hub import constants

            cache = f" (hub cache: {constants.HF_HUB_CACHE})"
        except ImportError:  # pragma: no cover
            cache = ""
        raise WeightsError(
            f"the pretrained weights of timm model {model_name!r} are not on this machine and the hub is offline "
            f"(HF_HUB_OFFLINE is set): looked for {looked}{cache}; {local_weights_hint(repr(model_name))}"
        )

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
        """Build without pretrained weights; a hub-hosted model still needs its config from the hub."""
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
            name = self._pretrained_name()
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
            keys = [] if name.startswith("local-dir:") else self._classifier_keys(name)
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
        import timm

        if self.model is not None:
            return dict(getattr(self.model, "pretrained_cfg", None) or {})
        local = self._local_dir()
        if local is not None:
            return dict(self._folder_config(local)[0])
        w = self.resolved_weights
        if w.kind == "file" and w.folder is not None:
            return dict(self._folder_config(w.folder)[0])
        name = self._pretrained_name() if w.kind in ("pretrained", "tag") else self.options.model
        try:
            pcfg = timm.models.get_pretrained_cfg(name)
        except Exception:  # hf-hub names: the config comes with the weights
            pcfg = None
        return pcfg.to_dict() if pcfg is not None else {}

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
            from timm.data import resolve_data_config

            if self.model is not None:
                cfg = resolve_data_config(model=self.model)
            else:
                self._check_model_name()
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

    def _probe_images(self):
        import torch

        size = tuple(self.data_config().get("input_size", (3, 224, 224)))
        g = torch.Generator().manual_seed(0)
        return torch.randn(2, *size, generator=g).to(self.device)

    def folded_head(self) -> FoldedHead:
        """The classifier folded into one affine map, with the modules whose inputs are the features."""
        from torch import nn

        model = self._require_model()
        if self._folded is None:
            name = self.options.model
            clf = model.get_classifier() if hasattr(model, "get_classifier") else None
            modules = head_modules(clf) if clf is not None else ()
            if (
                not modules
                or any(isinstance(m, nn.Identity) for m in modules)
                or getattr(model, "num_classes", 1) == 0
            ):
                raise HeadError(
                    f"model {name!r} has no classification head (num_classes=0): there is no linear map whose null "
                    "space could be audited; use a checkpoint with its classifier, or a model built with num_classes > 0"
                )
            if model.training:
                raise HeadError(f"model {name!r} is in training mode; its head is folded in eval mode only")
            try:
                shared = probe_shared_input(model, clf, self._probe_images()) if len(modules) > 1 else None
                self._folded = fold_head(clf, shared_input=shared, folders=self.head_folders)
            except HeadError as exc:
                raise HeadError(
                    f"model {name!r}: {exc}. Audit a model whose head is affine, or export its features and an "
                    "equivalent affine head and use the precomputed backbone"
                ) from exc
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
        import timm

        w = self.resolved_weights
        out: dict[str, Any] = {
            "plugin": self.plugin_name,
            "model": self.options.model,
            **weights_description(w, self.weights_digest, self.options.seed),
            "resolved_tag": self._resolved_tag,
            "img_size": self.options.img_size,
            "pretrained_cfg": self.pretrained_cfg_name(),
            "preprocessing": jsonable(self.data_config()),
            "timm_version": timm.__version__,
        }
        folder = self._local_dir() or (w.folder if w.kind == "file" else None)
        if folder is not None and (folder / "config.json").is_file():
            out["config_digest"] = file_digest(folder / "config.json")
        return out


@hookimpl
def register_backbones(register):
    register("timm", TimmBackbone)
