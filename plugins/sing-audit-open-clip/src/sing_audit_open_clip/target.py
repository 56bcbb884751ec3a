"""open_clip vision-language models (CLIP, EVA02, ...) as audit targets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from sing_audit.components import ImageTarget, TextTargetOptions
from sing_audit.errors import ConfigError, WeightsError, exception_summary
from sing_audit.hookspecs import hookimpl
from sing_audit.store import jsonable
from sing_audit.terminal import close_matches
from sing_audit.text_batches import default_text_batch_size, distinct_prompts, length_sorted_batches
from sing_audit.weights import (
    ResolvedWeights,
    hub_offline,
    hub_revision_description,
    file_digest,
    load_into,
    load_state_dict,
    resolve_weights,
    state_dict_digest,
    weights_description,
)

from .pretrained import check_cached, list_models, list_pretrained_tags
from .source import OpenClipSource
from .text_cut import cut_context, pooled_positions

__all__ = ["OpenClipTarget"]

_SCHEMAS = ("hf-hub:", "local-dir:")

class OpenClipTarget(OpenClipSource, ImageTarget):
    """An open_clip model: raw image embeddings and a text encoder.

    ``weights: pretrained`` takes the first tag open_clip lists for the model (recorded as
    ``resolved_tag``); tags trained with QuickGELU (OpenAI's) get that activation. A local
    file is loaded strictly into the architecture named by ``model`` as written: for OpenAI
    weights saved to a file, name the ``-quickgelu`` variant (e.g. ``ViT-B-32-quickgelu``).
    Files and random weights use the preprocessing of the model's first pretrained tag.

    ``model: hf-hub:org/repo[@revision]`` reads ``open_clip_config.json`` and the weights of
    the snapshot the revision names (``main`` by default; its commit is resolved once, asked
    of the hub or read from the cache offline, recorded as ``hub_revision`` and loaded
    exactly). ``model: local-dir:<folder>`` reads the same files from a folder (relative to
    the config file's folder); both come with their own weights (``weights: pretrained``).
    """

    class Options(TextTargetOptions):
        model: str = Field(min_length=1, description="open_clip model name (ViT-B-32, EVA02-B-16, hf-hub:org/repo)")
        weights: str = Field("pretrained", description="pretrained | random | <pretrained tag> | <local file>")
        image_size: int | None = Field(None, ge=8, description="force the image size (e.g. for small tests)")

    plugin_name = "open_clip"
    #: prompts per forward pass of the text encoder; None: the device's default
    #: (:func:`sing_audit.text_batches.default_text_batch_size`)
    text_batch_size: int | None = None

    def __init__(self, options: "OpenClipTarget.Options | dict[str, Any]") -> None:
        if not isinstance(options, self.Options):
            options = self.Options.model_validate(options)
        self.options = options
        self.templates = tuple(options.templates)
        self.class_prompts = options.class_prompts_path()
        self.model = None
        self.device = "cpu"
        self.random_weights = options.weights.strip().lower() == "random"
        self.weights_digest: str | None = None
        self.pretrained_tag: str | None = None
        self.quick_gelu: bool | None = None
        self._resolved: ResolvedWeights | None = None
        self._transform = None
        self._tokenizer = None
        self._hub_commit: str | None = None
        self._snapshot: Path | None = None
        self._folder_digests: dict[str, str] | None = None

    # ------------------------------------------------------------------ building

    @property
    def resolved_weights(self) -> ResolvedWeights:
        if self._resolved is None:
            self._resolved = resolve_weights(self.options.weights, self.options.base_dir)
        return self._resolved

    def _has_schema(self) -> bool:
        return self.options.model.startswith(_SCHEMAS)

    def _check_model_name(self) -> None:
        if self._has_schema():
            return
        name = self.options.model
        known = list_models()
        if name not in known and name.replace("/", "-") not in known:
            close = close_matches(name, known, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
            raise ConfigError(f"open_clip has no model named {name!r}{hint}", field="model")

    def check(self) -> None:
        """The pre-flight, before anything loads: the model name is one open_clip knows
        (with close matches), the weights file exists, a pretrained tag is one open_clip
        lists for the model, and — when the hub is offline (``HF_HUB_OFFLINE``) —
        pretrained weights are in the local cache."""
        self._check_model_name()
        try:
            w = self.resolved_weights
        except WeightsError as exc:
            raise WeightsError(str(exc), field="weights") from exc
        if w.kind == "tag" and not self._has_schema():
            self._check_tag(w.value, self._tags())
        local = self.local_dir()
        if local is not None:
            self._check_local_dir(local, weights=w.kind in ("pretrained", "tag"))
            return
        hub = self.hub_id()
        if hub is not None and hub_offline():
            repo = f"hf-hub:{hub[0]}@{self.hub_commit()}"  # the revision must be in the cache
            if w.kind in ("pretrained", "tag"):
                check_cached(repo, None)
            return
        if w.kind in ("pretrained", "tag") and hub_offline():
            tag = None if self._has_schema() else self._expected_tag(w)
            if tag is not None:
                check_cached(self.options.model, tag)

    def _check_tag(self, tag: str, tags: list[str]) -> None:
        if tag not in tags:
            close = close_matches(tag, tags, n=5, cutoff=0.5)
            listing = ", ".join(close or tags[:10]) or "none"
            raise WeightsError(
                f"open_clip model {self.options.model!r} has no pretrained tag {tag!r} (known tags: {listing}); "
                "use one of them, weights: pretrained, a local weights file, or weights: random",
                field="weights",
            )

    def _tags(self) -> list[str]:
        return [] if self._has_schema() else list_pretrained_tags(self.options.model)

    def _hub_error(self, what: str, exc: Exception) -> WeightsError:
        return WeightsError(
            f"the pretrained weights of open_clip model {what} could not be fetched or loaded "
            f"({exception_summary(exc)}); without network access, download them elsewhere and set "
            "weights: <local file>, or set weights: random for a smoke test (never a silent fallback)"
        )

    def _base_preprocess_kwargs(self) -> dict[str, Any]:
        """Preprocessing of the model's first pretrained tag, for weights that come without one."""
        import open_clip

        tags = self._tags()
        if not tags:
            return {}
        cfg = open_clip.get_pretrained_cfg(self.options.model, tags[0]) or {}
        out: dict[str, Any] = {}
        for src, dst in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                         ("resize_mode", "image_resize_mode")):
            if cfg.get(src) is not None:
                out[dst] = cfg[src]
        return out

    def load(self, device: str = "cpu") -> None:
        import open_clip
        import torch

        self._check_model_name()
        w = self.resolved_weights
        name = self.options.model
        common: dict[str, Any] = {"device": "cpu"}
        if self.options.image_size is not None:
            common["force_image_size"] = self.options.image_size

        if w.kind in ("pretrained", "tag"):
            if self._has_schema():
                if w.kind == "tag":
                    raise WeightsError(
                        f"model {name!r} names its weights itself; a tag ({w.value!r}) cannot be combined with it: "
                        "use weights: pretrained"
                    )
                tag = None
            else:
                tags = self._tags()
                if w.kind == "pretrained":
                    if not tags:
                        raise WeightsError(
                            f"open_clip lists no pretrained weights for model {name!r}; set weights to a local "
                            "file, or to random for a smoke test"
                        )
                    tag = tags[0]
                else:
                    tag = w.value
                    self._check_tag(tag, tags)
                pcfg = open_clip.get_pretrained_cfg(name, tag) or {}
                model_cfg = open_clip.get_model_config(name) or {}
                if pcfg.get("quick_gelu", False) and not model_cfg.get("quick_gelu", False):
                    # the weights were trained with QuickGELU: build the activation they expect
                    common["force_quick_gelu"] = True
            source = self._source_name(weights=True)
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    source, pretrained=tag, require_pretrained=True, **common
                )
            except Exception as exc:
                raise self._hub_error(repr(name) + (f" with tag {tag!r}" if tag else ""), exc) from exc
            self.pretrained_tag = tag
            self.random_weights = False
        else:
            common.update(self._base_preprocess_kwargs())
            common.update(pretrained_image=False, pretrained_text=False)
            if self._has_schema():
                common["load_weights"] = False
            source = self._source_name(weights=False)
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.options.seed)
                    model, _, preprocess = open_clip.create_model_and_transforms(source, pretrained=None, **common)
            except (ConfigError, WeightsError):
                raise
            except Exception as exc:
                if self._has_schema():
                    raise self._hub_error(repr(name), exc) from exc
                raise
            if w.kind == "file":
                sd = load_state_dict(w.path)
                load_into(model, sd, what=f"open_clip model {name!r} from {w.path}")
                self.random_weights = False
            else:
                self.random_weights = True
            self.pretrained_tag = None

        self.quick_gelu = bool(common.get("force_quick_gelu", False)) or bool(
            (open_clip.get_model_config(name) or {}).get("quick_gelu", False) if not self._has_schema() else False
        )
        model.eval()
        model.to(device)
        self.model = model
        self.device = device
        self._transform = preprocess
        self.weights_digest = file_digest(w.path) if w.kind == "file" else state_dict_digest(model)
        self._tokenizer = self._load_tokenizer(source)

    def _load_tokenizer(self, source: str):
        import open_clip

        try:
            return open_clip.get_tokenizer(source)
        except Exception as exc:
            raise WeightsError(
                f"the tokenizer of open_clip model {self.options.model!r} could not be loaded "
                f"({exception_summary(exc)}); it is fetched from the hub on first use: run once with "
                "network access to cache it (or set HF_HOME to a folder that has it), or use a model with the "
                "built-in CLIP tokenizer"
            ) from exc

    def _require_model(self):
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}: call load(device) before using the model")
        return self.model

    # ------------------------------------------------------------------ encoding

    def transform(self) -> Callable[[Any], Any]:
        self._require_model()
        return self._transform

    def encode_images(self, images):
        import torch

        model = self._require_model()
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            return model.encode_image(images.to(self.device, dtype))

    def preprocess_pixels(self, pixels):
        """B×3×H×W float pixels in [0, 1] -> the normalised B×3×S×S input of the image encoder.

        Follows the model's ``preprocess_cfg`` (what :meth:`transform` does to a PIL image):
        ``resize_mode`` ``shortest`` (resize the short side, centre-crop), ``longest``
        (resize the long side, centre-pad with ``fill_color``) or ``squash``, with the
        configured interpolation (antialiased, as PIL resizes), then ``(x − mean) / std``.
        Computed in float64 on float tensors: nothing is rounded to 8 bits or clamped, so
        bicubic overshoot stays (PIL would clip it). An image already at the model's size
        is not resampled, and then this equals ``transform()`` of its 8-bit rendering
        exactly (up to float rounding).
        """
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        model = self._require_model()
        cfg = dict(getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {})
        size = cfg.get("size", getattr(getattr(model, "visual", None), "image_size", 224))
        th, tw = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[-2]), int(size[-1]))
        mean = cfg.get("mean") or (0.48145466, 0.4578275, 0.40821073)
        std = cfg.get("std") or (0.26862954, 0.26130258, 0.27577711)
        mean = tuple(mean) if isinstance(mean, (list, tuple)) else (float(mean),) * 3
        std = tuple(std) if isinstance(std, (list, tuple)) else (float(std),) * 3
        mode = cfg.get("resize_mode") or "shortest"
        interp = InterpolationMode.BILINEAR if cfg.get("interpolation") == "bilinear" else InterpolationMode.BICUBIC
        fill = cfg.get("fill_color", 0) or 0

        x = torch.as_tensor(pixels)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"pixels must be B×3×H×W, got shape {tuple(x.shape)}")
        x = x.detach().to("cpu", torch.float64)
        h, w = int(x.shape[-2]), int(x.shape[-1])

        def resize(img, out_hw):
            if [int(out_hw[0]), int(out_hw[1])] == [img.shape[-2], img.shape[-1]]:
                return img
            return TF.resize(img, [int(out_hw[0]), int(out_hw[1])], interpolation=interp, antialias=True)

        if mode == "squash":
            x = resize(x, (th, tw))
        elif mode == "longest":
            ratio = max(h / th, w / tw)
            x = resize(x, (round(h / ratio), round(w / ratio)))
            x = self._crop_or_pad(x, th, tw, float(fill if not isinstance(fill, (list, tuple)) else fill[0]) / 255.0)
        elif mode == "shortest":
            if th == tw:
                short, long = (h, w) if h <= w else (w, h)
                new_long = int(th * long / short)  # torchvision's Resize(int) rounding
                x = resize(x, (th, new_long) if h <= w else (new_long, th))
            else:
                ratio = min(h / th, w / tw)
                x = resize(x, (round(h / ratio), round(w / ratio)))
            x = self._crop_or_pad(x, th, tw, 0.0)
        else:
            raise ValueError(f"open_clip resize_mode {mode!r} is not supported by encode_pixels")
        m = torch.as_tensor(mean, dtype=torch.float64)[None, :, None, None]
        s = torch.as_tensor(std, dtype=torch.float64)[None, :, None, None]
        return (x - m) / s

    @staticmethod
    def _crop_or_pad(x, th: int, tw: int, fill: float):
        """Centre crop (and pad with ``fill`` where smaller), as open_clip's ``center_crop_or_pad``."""
        import torch

        h, w = int(x.shape[-2]), int(x.shape[-1])
        if th > h or tw > w:
            left, top = (tw - w) // 2 if tw > w else 0, (th - h) // 2 if th > h else 0
            right, bottom = (tw - w + 1) // 2 if tw > w else 0, (th - h + 1) // 2 if th > h else 0
            x = torch.nn.functional.pad(x, (left, right, top, bottom), value=fill)
            h, w = int(x.shape[-2]), int(x.shape[-1])
        top, left = round((h - th) / 2.0), round((w - tw) / 2.0)
        return x[..., top:top + th, left:left + tw]

    def encode_pixels(self, pixels):
        """B×3×H×W float pixels in [0, 1] -> B×n raw image embeddings (see :meth:`preprocess_pixels`)."""
        return self.encode_images(self.preprocess_pixels(pixels))

    def encode_text(self, prompts: Sequence[str]) -> np.ndarray:
        """K prompts -> K×n raw float64 embeddings, in the prompts' order.

        Each distinct prompt is encoded once, in batches of similar token length
        (:mod:`sing_audit.text_batches`). When the text tower is causal and pools one token
        (:meth:`_pooled_positions`), each batch's tokens are cut after its longest prompt's
        pooled token: the embeddings equal the full-context ones up to float rounding.
        Otherwise every batch keeps the full context."""
        import torch

        model = self._require_model()
        prompts = [str(p) for p in prompts]
        if not prompts:
            return np.zeros((0, self.embedding_dim()), dtype=np.float64)
        distinct, inverse = distinct_prompts(prompts)
        tokens = self._tokenizer(distinct)
        pooled = self._pooled_positions(tokens)
        lengths = np.full(len(distinct), tokens.shape[1]) if pooled is None else pooled + 1
        out: np.ndarray | None = None
        with torch.inference_mode():
            for rows in length_sorted_batches(lengths, self._text_batch()):
                n = int(lengths[rows].max())
                encoder = model if n == tokens.shape[1] else cut_context(model, n)
                emb = encoder.encode_text(tokens[torch.from_numpy(rows), :n].to(self.device))
                emb = emb.to("cpu", torch.float64).numpy()
                if out is None:
                    out = np.empty((len(distinct), emb.shape[1]), dtype=np.float64)
                out[rows] = emb
        return out[inverse]  # type: ignore[index]

    def _text_batch(self) -> int:
        return int(self.text_batch_size) if self.text_batch_size is not None else default_text_batch_size(self.device)

    def _pooled_positions(self, tokens) -> np.ndarray | None:
        """The position each row of ``tokens`` is pooled at, or None when the full context
        must be kept (:func:`~sing_audit_open_clip.text_cut.pooled_positions`)."""
        return pooled_positions(self.model, tokens, f"open_clip {self.options.model}")

    def embedding_dim(self) -> int:
        model = self._require_model()
        dim = getattr(getattr(model, "visual", None), "output_dim", None)
        if dim is None:
            proj = getattr(model, "text_projection", None)
            dim = proj.shape[-1] if proj is not None else None
        if dim is None:
            raise RuntimeError(f"cannot tell the embedding width of open_clip model {self.options.model!r}")
        return int(dim)

    # ------------------------------------------------------------------ provenance

    def _expected_tag(self, w: ResolvedWeights) -> str | None:
        if w.kind == "tag":
            return w.value
        if w.kind == "pretrained":
            tags = self._tags()
            return tags[0] if tags else None
        return None

    def preprocessing(self) -> dict[str, Any] | None:
        if self.model is None:
            return None
        cfg = getattr(getattr(self.model, "visual", None), "preprocess_cfg", None)
        return jsonable(dict(cfg)) if cfg else None

    def describe(self) -> dict[str, Any]:
        w = self.resolved_weights
        out: dict[str, Any] = {
            "plugin": self.plugin_name,
            "model": self.options.model,
            **weights_description(w, self.weights_digest, self.options.seed),
            "resolved_tag": self.pretrained_tag if self.model is not None else self._expected_tag(w),
            "image_size": self.options.image_size,
            "quick_gelu": self.quick_gelu,
            "templates": list(self.templates),
            "preprocessing": self.preprocessing(),
            "open_clip_version": metadata.version("open_clip_torch"),
        }
        hub = self.hub_id()
        if hub is not None:
            out["hub_revision"] = hub_revision_description(hub[0], hub[1], self.hub_commit())  # type: ignore[arg-type]
        local = self.local_dir()
        if local is not None:
            out["files"] = self._local_digests(local)
        return out


@hookimpl
def register_targets(register):
    register("open_clip", OpenClipTarget)
