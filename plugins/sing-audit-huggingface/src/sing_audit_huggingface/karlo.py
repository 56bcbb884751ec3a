"""Karlo's own CLIP towers as an audit target, so the UnCLIP visualizer renders in its space.

Karlo (``kakaobrain/karlo-v1-alpha-image-variations``, diffusers'
``UnCLIPImageVariationPipeline``) decodes raw ``image_embeds`` of its
``CLIPVisionModelWithProjection``. A translator fitted on exactly those embeddings maps
classifier features into the space the decoder reads: that is what the ``karlo`` target
gives. Text prompts go through the pipeline's ``CLIPTextModelWithProjection``
(``text_embeds``).

Where the components come from: :mod:`sing_audit_huggingface.karlo_source`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import numpy as np
from pydantic import Field

from sing_audit.components import ImageTarget, TextTargetOptions
from sing_audit.hookspecs import hookimpl
from sing_audit.text_batches import default_text_batch_size, distinct_prompts, length_sorted_batches
from sing_audit.weights import state_dict_digest

from .karlo_source import KARLO_REPO, TARGET_PARTS, load_clip_parts, parts_digest, resolve_karlo_source
from .transformers_backbone import ProcessorTransform

__all__ = ["KarloTarget"]

log = logging.getLogger("sing_audit")

class KarloTarget(ImageTarget):
    """Karlo's CLIP image and text towers: raw ``image_embeds`` and ``text_embeds``."""

    class Options(TextTargetOptions):
        model: str = Field(KARLO_REPO, min_length=1, description="hub repository id, or a local folder in the hub's layout")
        weights: str = Field(
            "pretrained", description="pretrained | random | <hub revision> | <local folder in the hub's layout>"
        )

    plugin_name = "karlo"
    #: prompts per forward pass of the text encoder; None: the device's default
    #: (:func:`sing_audit.text_batches.default_text_batch_size`)
    text_batch_size: int | None = None

    def __init__(self, options: KarloTarget.Options | dict[str, Any]) -> None:
        if not isinstance(options, self.Options):
            options = self.Options.model_validate(options)
        self.options = options
        self.templates = tuple(options.templates)
        self.class_prompts = options.class_prompts_path()
        self.source = resolve_karlo_source(options.model, options.weights, options.base_dir, options.seed)
        self.source.check(TARGET_PARTS)
        self.random_weights = self.source.random
        self.image_encoder = None
        self.text_encoder = None
        self.tokenizer = None
        self.processor = None
        self.device = "cpu"
        self.weights_digest: str | None = None

    # ------------------------------------------------------------------ building

    def load(self, device: str = "cpu") -> None:
        src = self.source
        parts = load_clip_parts(src)
        self.image_encoder, self.text_encoder = parts["image_encoder"], parts["text_encoder"]
        self.tokenizer, self.processor = parts["tokenizer"], parts["feature_extractor"]
        for m in (self.image_encoder, self.text_encoder):
            m.eval()
            m.to(device)
        self.device = device
        if src.random:
            self.weights_digest = state_dict_digest(
                {f"image_encoder.{k}": v for k, v in self.image_encoder.state_dict().items()}
                | {f"text_encoder.{k}": v for k, v in self.text_encoder.state_dict().items()}
            )
        else:
            self.weights_digest = parts_digest(src, TARGET_PARTS)

    def _require_model(self):
        if self.image_encoder is None:
            raise RuntimeError(f"{type(self).__name__}: call load(device) before using the model")
        return self.image_encoder

    # ------------------------------------------------------------------ encoding

    def transform(self) -> Callable[[Any], Any]:
        self._require_model()
        # a class, not a closure: DataLoader workers started by spawn (macOS, Windows) pickle it
        return ProcessorTransform(self.processor)

    def encode_images(self, images):
        import torch

        model = self._require_model()
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            return model(pixel_values=images.to(self.device, dtype)).image_embeds

    def preprocess_pixels(self, pixels):
        """B×3×H×W float pixels in [0, 1] -> B×3×h×w model input (float64, on the CPU).

        The feature extractor's steps on floats: shortest edge resized (bicubic,
        antialiased; torch's kernel, not PIL's, so values differ from :meth:`transform`
        by interpolation round-off), centre crop, ``rescale_factor`` relative to 8-bit
        pixels, normalisation. No quantisation, no clamping.
        """
        import torch
        import torch.nn.functional as F

        p = self.processor
        x = torch.as_tensor(pixels)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"pixels must be B×3×H×W, got shape {tuple(x.shape)}")
        x = x.detach().to("cpu", torch.float64)
        if p.do_resize:
            h, w = int(x.shape[-2]), int(x.shape[-1])
            size = p.size
            if "shortest_edge" in size:
                s = int(size["shortest_edge"])
                short, long = (h, w) if h <= w else (w, h)
                new_long = int(s * long / short)
                out = (s, new_long) if h <= w else (new_long, s)
            else:
                out = (int(size["height"]), int(size["width"]))
            if out != (h, w):
                mode = "bicubic" if int(p.resample) == 3 else "bilinear"
                x = F.interpolate(x, size=out, mode=mode, align_corners=False, antialias=True)
        if p.do_center_crop:
            th, tw = int(p.crop_size["height"]), int(p.crop_size["width"])
            h, w = int(x.shape[-2]), int(x.shape[-1])
            if th > h or tw > w:
                x = F.pad(x, ((tw - w) // 2 if tw > w else 0, (tw - w + 1) // 2 if tw > w else 0,
                              (th - h) // 2 if th > h else 0, (th - h + 1) // 2 if th > h else 0))
                h, w = int(x.shape[-2]), int(x.shape[-1])
            top, left = (h - th) // 2, (w - tw) // 2
            x = x[..., top:top + th, left:left + tw]
        if p.do_rescale:
            x = x * (float(p.rescale_factor) * 255.0)
        if p.do_normalize:
            mean = torch.as_tensor(p.image_mean, dtype=torch.float64)[None, :, None, None]
            std = torch.as_tensor(p.image_std, dtype=torch.float64)[None, :, None, None]
            x = (x - mean) / std
        return x

    def encode_pixels(self, pixels):
        """B×3×H×W float pixels in [0, 1] -> B×n raw image embeddings (see :meth:`preprocess_pixels`)."""
        return self.encode_images(self.preprocess_pixels(pixels))

    def encode_text(self, prompts: Sequence[str]) -> np.ndarray:
        """K prompts -> K×n raw float64 ``text_embeds``, in the prompts' order.

        Each distinct prompt is encoded once, in batches of similar token length
        (:mod:`sing_audit.text_batches`), each batch cut after its longest prompt's pooled
        token when the tower allows it (:meth:`_pooled_positions`); otherwise at the
        tokenizer's full ``model_max_length``, as the pipeline encodes them."""
        import torch

        self._require_model()
        prompts = [str(p) for p in prompts]
        if not prompts:
            return np.zeros((0, self.embedding_dim()), dtype=np.float64)
        distinct, inverse = distinct_prompts(prompts)
        ids = self.tokenizer(
            distinct,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = self._pooled_positions(ids)
        lengths = np.full(len(distinct), ids.shape[1]) if pooled is None else pooled + 1
        out = np.empty((len(distinct), self.embedding_dim()), dtype=np.float64)
        size = int(self.text_batch_size) if self.text_batch_size is not None else default_text_batch_size(self.device)
        with torch.inference_mode():
            for rows in length_sorted_batches(lengths, size):
                n = int(lengths[rows].max())
                # as the pipeline does: token ids only (the causal mask hides the padding)
                emb = self.text_encoder(ids[torch.from_numpy(rows), :n].to(self.device)).text_embeds
                out[rows] = emb.to("cpu", torch.float64).numpy()
        return out[inverse]

    def _pooled_positions(self, ids) -> np.ndarray | None:
        """The position each row of ``ids`` (P×L, padded) is pooled at, or None when the
        full context must be kept.

        transformers' ``CLIPTextModel`` always applies a causal mask (its forward builds
        one with ``create_causal_mask`` and runs the encoder ``is_causal=True``), takes
        its position ids as the first L of its table, and pools one token: with the
        legacy ``eos_token_id == 2`` the highest id (argmax, the end of text), otherwise
        the first ``eos_token_id``. Tokens after that position never reach the pooled
        output, so a batch may be cut after its longest prompt's pooled token; a prefix
        holding that position has the same first maximum (first eos). Any other text
        tower keeps the full length (logged at debug)."""
        from transformers import CLIPTextModel

        tower = getattr(self.text_encoder, "text_model", self.text_encoder)
        eos = getattr(tower, "eos_token_id", None)  # what its forward pools by
        if not isinstance(tower, CLIPTextModel) or eos is None:
            log.debug("karlo: text encoded at full context length (text tower %s is not transformers' CLIPTextModel "
                      "with a known eos token)", type(tower).__name__)
            return None
        if eos == 2:
            idx = ids.argmax(dim=-1)
        else:
            idx = (ids == eos).int().argmax(dim=-1)
        return idx.cpu().numpy().astype(np.int64)

    def embedding_dim(self) -> int:
        return int(self._require_model().config.projection_dim)

    # ------------------------------------------------------------------ provenance

    def describe(self) -> dict[str, Any]:
        digest = self.weights_digest
        if digest is None and not self.source.random:
            digest = parts_digest(self.source, TARGET_PARTS)
        return {
            "plugin": self.plugin_name,
            "model": self.options.model,
            "source": self.source.as_dict(),
            "weights_digest": digest,
            "random_weights": self.source.random,
            "templates": list(self.templates),
            "transformers_version": metadata.version("transformers"),  # not an import of transformers
        }


@hookimpl
def register_targets(register):
    register("karlo", KarloTarget)
