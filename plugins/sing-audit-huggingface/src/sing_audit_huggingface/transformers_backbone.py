"""Hugging Face ``transformers`` image classifiers (``AutoModelForImageClassification``).

``model`` is a local folder in the hub's layout (``config.json``, weights,
``preprocessor_config.json``) or a hub id, with ``revision`` (a branch, tag or commit;
``main`` by default). A hub id's revision is resolved once to the commit of its snapshot
(asked of the hub, or read from the local cache offline), recorded in ``describe()`` as
``hub_revision`` (so results name it and another snapshot never reuses cached features),
and that commit is what is loaded. ``weights``: ``pretrained`` (the folder's or
the hub repository's own weights), ``random`` (built from the config, seeded; explicit),
or a local state-dict file loaded strictly into the architecture of the config.
Features are the classifier layer's input (captured by a forward pre-hook: for ViT the
final-normed class token, for ResNet the pooled map flattened, …); preprocessing is the
image processor saved beside the model, applied by the processor itself.

``transformers`` is imported only when a model is used, so the plugin costs nothing to
register.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from sing_audit.components import ModelOptions
from sing_audit.errors import ConfigError, DataError, HeadError, WeightsError, at_field, exception_summary
from sing_audit.hooked_head import HookedHeadBackbone, find_head_layer
from sing_audit.hookspecs import hookimpl
from sing_audit.host import BuildContext
from sing_audit.imagenet import imagenet_class_info
from sing_audit.store import jsonable
from sing_audit.weights import (
    ResolvedWeights,
    file_digest,
    hub_cached_file,
    hub_offline,
    hub_revision_description,
    load_into,
    load_state_dict,
    resolve_hub_commit,
    resolve_weights,
    state_dict_digest,
    weights_description,
)

__all__ = ["ProcessorTransform", "TransformersBackbone"]

_WEIGHT_FILE_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")


class ProcessorTransform:
    """PIL image -> C×H×W tensor through a transformers image processor (picklable)."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, image):
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


class TransformersBackbone(HookedHeadBackbone):
    """An ``AutoModelForImageClassification`` model; features are its classifier's input."""

    class Options(ModelOptions):
        model: str = Field(min_length=1, description="local folder (save_pretrained layout) or hub id")
        head: str | None = Field(None, description="dotted path of the classification layer (default: classifier)")
        revision: str | None = Field(None, description="hub revision (branch, tag or commit)")

    plugin_name = "transformers"

    def __init__(self, options: TransformersBackbone.Options | dict[str, Any], context: BuildContext | None = None) -> None:
        super().__init__(options, context)
        self.head_path = self.options.head or "classifier"
        self._processor = None
        self._folder_digests: dict[str, str] | None = None
        self._hub_commit: str | None = None
        self.validate()

    def validate(self) -> None:
        """Check the options without building the model (no network).

        A local folder must exist and hold ``config.json`` and ``preprocessor_config.json``
        (and weights, for ``pretrained``); a hub id, when the hub is known to be offline
        (``HF_HUB_OFFLINE``), must be in the local cache. Called by the constructor.
        """
        import importlib.util

        if importlib.util.find_spec("transformers") is None:
            raise ConfigError(
                "the transformers backbone needs the transformers package, which is not installed: "
                "pip install transformers"
            )
        with at_field("weights"):
            w = self.resolved_weights
        with at_field("model"):
            self._check_model(w)

    def _check_model(self, w) -> None:
        folder = self.folder()
        if folder is not None:
            if not (folder / "config.json").is_file():
                raise WeightsError(
                    f"the model folder {folder} has no config.json; save the model there with save_pretrained"
                )
            self._check_processor_file(folder)
            if w.kind == "pretrained" and not any(any(folder.glob(p)) for p in _WEIGHT_FILE_PATTERNS):
                raise WeightsError(
                    f"the model folder {folder} holds no weights (model.safetensors or pytorch_model.bin); save "
                    "them with save_pretrained, point weights at a weights file, or set weights: random"
                )
        elif hub_offline():
            repo = self.options.model
            commit = self.hub_commit()  # the revision must be in the cache
            needed = [("config.json",), ("preprocessor_config.json",)]
            if w.kind == "pretrained":
                needed.append(("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                               "pytorch_model.bin.index.json"))
            for names in needed:
                if hub_cached_file(repo, names, revision=commit) is None:
                    raise WeightsError(
                        f"{' or '.join(names)} of hub model {repo!r} is not on this machine and the hub is offline "
                        "(HF_HUB_OFFLINE is set); save the model and its image processor elsewhere with "
                        "save_pretrained and set model: <that folder>"
                    )

    @staticmethod
    def _check_processor_file(folder: Path) -> None:
        if not (folder / "preprocessor_config.json").is_file():
            raise DataError(
                f"the model folder {folder} has no preprocessor_config.json, so its preprocessing is unknown; "
                "save the image processor beside the model (AutoImageProcessor.from_pretrained(<hub id>)"
                ".save_pretrained(folder), or e.g. ViTImageProcessor(size=…, image_mean=…, image_std=…)"
                ".save_pretrained(folder))"
            )

    # ------------------------------------------------------------------ where the model is

    def folder(self) -> Path | None:
        """The model's local folder, or ``None`` for a hub id."""
        spec = self.options.model
        path = Path(spec).expanduser()
        if not path.is_absolute():
            path = (Path(self.options.base_dir) if self.options.base_dir is not None else Path.cwd()) / path
        if path.is_dir():
            return path.resolve()
        looks_local = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
        if looks_local or path.exists():
            raise WeightsError(
                f"model folder not found: {path} (a local model is a folder written by save_pretrained, with "
                "config.json and preprocessor_config.json)"
            )
        return None

    def hub_commit(self) -> str | None:
        """The commit of the hub snapshot a hub id loads (``None`` for a folder): ``revision``
        (``main`` by default) resolved once, so the description that keys the cache and the
        model loaded name the same snapshot."""
        if self.folder() is not None:
            return None
        if self._hub_commit is None:
            try:
                self._hub_commit = resolve_hub_commit(self.options.model, self.options.revision, what=self._what())
            except WeightsError as exc:
                raise WeightsError(
                    f"{exc}; or save the model and its image processor elsewhere with save_pretrained and set "
                    "model: <that folder>"
                ) from exc
        return self._hub_commit

    def _revision(self) -> str | None:
        """What ``from_pretrained`` is given: the resolved commit for a hub id, nothing for a folder."""
        return self.hub_commit()

    def _source(self) -> str:
        folder = self.folder()
        return str(folder) if folder is not None else self.options.model

    @property
    def resolved_weights(self) -> ResolvedWeights:
        if self._resolved is None:
            w = resolve_weights(self.options.weights, self.options.base_dir)
            if w.kind == "tag":
                raise WeightsError(
                    f"weights {w.value!r} is neither pretrained, random, nor an existing file; for a hub revision "
                    "use the revision option"
                )
            self._resolved = w
        return self._resolved

    def _what(self) -> str:
        return f"transformers model {self.options.model!r}"

    def _hub_error(self, what: str, exc: Exception) -> Exception:
        folder = self.folder()
        if folder is not None:
            return WeightsError(f"the {what} of the model folder {folder} could not be read ({exception_summary(exc)})")
        return WeightsError(
            f"the {what} of hub model {self.options.model!r} could not be fetched or loaded ({exc.__class__.__name__}: "
            f"{exception_summary(exc)}); without network access, save the model elsewhere with save_pretrained (model and image "
            "processor) and set model: <that folder>; weights: random is only for smoke tests"
        )

    # ------------------------------------------------------------------ building

    def _config(self):
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(self._source(), revision=self._revision())
        except Exception as exc:  # OSError, ValueError (unknown model_type), …
            raise self._hub_error("configuration", exc) from exc

    def load(self, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForImageClassification

        w = self.resolved_weights
        src = self._source()
        if w.kind == "pretrained":
            try:
                model = AutoModelForImageClassification.from_pretrained(src, revision=self._revision())
            except Exception as exc:
                raise self._hub_error("weights", exc) from exc
        else:
            config = self._config()
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.options.seed)
                    model = AutoModelForImageClassification.from_config(config)
            except ValueError as exc:
                raise ConfigError(f"{self.options.model!r} is not an image classifier transformers knows: {exception_summary(exc)}") from exc
            if w.kind == "file":
                load_into(model, load_state_dict(w.path), what=f"transformers model {self.options.model!r} from {w.path}")
        if device == "cpu" and model.dtype in (torch.float16, torch.bfloat16):
            model = model.float()  # half-precision checkpoints: compute in float32 on the CPU
        model.eval().to(device)
        self.head_module, self.head_affine = self._find_head(model)
        self.model = model
        self.device = device
        self.random_weights = w.kind == "random"
        self.weights_digest = file_digest(w.path) if w.kind == "file" else state_dict_digest(model)

    def _find_head(self, model):
        path = self.options.head
        if path is None:
            if not hasattr(model, "classifier"):
                linear = [n for n, m in model.named_modules() if type(m).__name__ == "Linear"]
                raise HeadError(
                    f"{self._what()} ({type(model).__name__}) has no classifier attribute; set head to the dotted "
                    f"path of its classification layer (linear layers: {', '.join(linear[-5:]) or 'none'})"
                )
            path = "classifier"
        return find_head_layer(model, path, self._what(), self.head_folders)

    def _forward(self, x):
        return self.model(pixel_values=x.to(self.model.dtype))

    def _class_names(self) -> list[str] | None:
        id2label = getattr(getattr(self.model, "config", None), "id2label", None) or {}
        c = int(self.head_affine.weight.shape[0])
        names = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(c)]
        generic = all(not n or n == f"LABEL_{i}" for i, n in enumerate(names))
        if generic:
            return None  # 1000 classes: ImageNet names and synsets from linear_head_from
        return [n.split(",")[0].strip() or f"class {i}" for i, n in enumerate(names)]

    def declared_classes(self) -> tuple[int, list[str] | None, list[str] | None] | None:
        """The head's classes from the model's ``config.json`` (``id2label``; the folder's, or
        the hub cache's), named as :meth:`head` names them, without weights. ``None`` for a
        ``head`` of the user's choice, or when the config is not on this machine."""
        if self.options.head is not None:
            return None
        folder = self.folder()
        path = folder / "config.json" if folder is not None else hub_cached_file(
            self.options.model, "config.json", revision=self.options.revision)
        try:
            id2label = json.loads(Path(path).read_text(encoding="utf-8")).get("id2label") or {} if path else {}
        except (OSError, ValueError, AttributeError):
            return None
        c = len(id2label) if isinstance(id2label, dict) else 0
        if not c:
            return None
        names = [str(id2label.get(str(i), id2label.get(i, ""))) for i in range(c)]
        if all(not n or n == f"LABEL_{i}" for i, n in enumerate(names)):
            info = imagenet_class_info(c)
            return (c, list(info[1]), list(info[0])) if info is not None else (c, None, None)
        info = imagenet_class_info(1000) if c == 1000 else None
        return c, [n.split(",")[0].strip() or f"class {i}" for i, n in enumerate(names)], list(info[0]) if info else None

    def declared_feature_dim(self) -> int | None:
        """The width of the classifier layer's input, from the model built from its
        ``config.json`` on the ``meta`` device (no weights, no images, no network: a hub id
        only when its config is cached): :func:`~sing_audit.heads.head_input_width` of the
        head layer (for DINOv2's classifier, class token + mean patch token: twice the hidden
        size). ``None`` when that cannot tell (a head of another kind; a config not here)."""
        import torch

        from sing_audit.heads import head_input_width

        folder = self.folder()
        if folder is None:
            found = hub_cached_file(self.options.model, "config.json", revision=self._hub_commit or self.options.revision)
            folder = found.parent if found is not None else None
        if folder is None or not (folder / "config.json").is_file():
            return None
        try:
            from transformers import AutoConfig, AutoModelForImageClassification

            config = AutoConfig.from_pretrained(str(folder))
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                model = AutoModelForImageClassification.from_config(config)
            return head_input_width(model.get_submodule(self.options.head or "classifier"))
        except Exception:  # noqa: BLE001 - the run builds the model and reports what is wrong
            return None

    def _class_keys(self) -> list[str] | None:
        if int(self.head_affine.weight.shape[0]) != 1000 or self._class_names() is None:
            return None
        info = imagenet_class_info(1000)  # HF ImageNet-1k heads use the standard class order
        return list(info[0]) if info is not None else None

    # ------------------------------------------------------------------ preprocessing

    def processor(self):
        if self._processor is None:
            from transformers import AutoImageProcessor

            folder = self.folder()
            if folder is not None:
                self._check_processor_file(folder)
            try:
                self._processor = AutoImageProcessor.from_pretrained(self._source(), revision=self._revision())
            except Exception as exc:
                raise self._hub_error("image processor configuration", exc) from exc
        return self._processor

    def transform(self) -> Callable[[Any], Any]:
        return ProcessorTransform(self.processor())

    # ------------------------------------------------------------------ provenance

    def _local_digests(self) -> dict[str, str]:
        """Digests of the folder's config and (for pretrained) weight files: the cache key before load."""
        if self._folder_digests is None:
            folder = self.folder()
            out: dict[str, str] = {}
            if folder is not None:
                names = ["config.json"]
                if self.resolved_weights.kind == "pretrained":
                    names += sorted({p.name for pat in _WEIGHT_FILE_PATTERNS for p in folder.glob(pat)})
                for name in names:
                    if (folder / name).is_file():
                        out[name] = file_digest(folder / name)
            self._folder_digests = out
        return self._folder_digests

    def describe(self) -> dict[str, Any]:
        import transformers

        w = self.resolved_weights
        proc = self.processor()
        folder = self.folder()
        out: dict[str, Any] = {
            "plugin": self.plugin_name,
            "model": str(folder) if folder is not None else self.options.model,
            "revision": self.options.revision,
            "hub_revision": None if folder is not None else hub_revision_description(
                self.options.model, self.options.revision, self.hub_commit()),  # type: ignore[arg-type]
            "files": self._local_digests(),
            "head": self.options.head or "classifier",
            **weights_description(w, self.weights_digest, self.options.seed),
            "preprocessing": json.loads(json.dumps(jsonable({"class": type(proc).__name__, **proc.to_dict()}, repr))),
            "transformers_version": transformers.__version__,
        }
        return out


@hookimpl
def register_backbones(register):
    register("transformers", TransformersBackbone)
