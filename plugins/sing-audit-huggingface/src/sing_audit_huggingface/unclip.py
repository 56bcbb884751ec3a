"""The ``unclip`` visualizer: Karlo's image-variation decoder renders target-space embeddings.

diffusers' ``UnCLIPImageVariationPipeline`` (under ``diffusers.pipelines.deprecated``)
turns a raw CLIP ``image_embeds`` vector into a picture in two diffusion stages (a
64 px decoder, then super-resolution). It renders only embeddings of its own image
encoder, so it works with a ``karlo`` target loaded from the same folder or hub
repository (:func:`sing_audit.visualize.check_visualizer` enforces this).

Noise: each render gets its own freshly seeded generators: one draws the decoder's and
the super-resolution stage's initial latents (passed explicitly as ``decoder_latents``
and ``super_res_latents``), another is handed to the pipeline for the noise its
schedulers draw at every step. The two renders of a pair use the same seed, so they see
identical noise at every step of both stages; they are run one after the other, never in
one batch (a batch would give each row different step noise).
"""

from __future__ import annotations

import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from sing_audit.errors import WeightsError
from sing_audit.hookspecs import hookimpl
from sing_audit.visualize import Visualizer, VisualizerOptions

from .karlo import KarloTarget
from .karlo_source import (
    KARLO_REPO,
    PIPELINE_PARTS,
    KarloSource,
    load_clip_parts,
    load_part,
    parts_digest,
    resolve_karlo_source,
)

__all__ = ["UnclipVisualizer"]

#: xor-ed into a pair's seed for the step-noise generator (the latents use the seed itself)
_STEP_NOISE = 0x5EED_0F_57E9


class UnclipVisualizer(Visualizer):
    """Original and equivalent embeddings rendered by Karlo's UnCLIP image-variation pipeline."""

    class Options(VisualizerOptions):
        model: str | None = Field(None, description="hub repository id or local folder (default: the karlo target's)")
        weights: str | None = Field(
            None, description="pretrained | random | <hub revision> | <local folder> (default: the karlo target's)"
        )
        seed: int = Field(0, description="seed for weights: random")
        decoder_steps: int = Field(25, ge=1, description="denoising steps of the 64 px decoder")
        super_res_steps: int = Field(7, ge=1, description="denoising steps of the super-resolution stage")
        guidance_scale: float = Field(8.0, ge=0.0, description="decoder classifier-free guidance (1 or less: off)")
        base_dir: Path | None = Field(None, description="folder relative paths start from (set by the host)")

    plugin_name = "unclip"

    def __init__(self, options: UnclipVisualizer.Options | dict[str, Any] | None = None) -> None:
        if not isinstance(options, self.Options):
            options = self.Options.model_validate(options or {})
        self.options = options
        self.source: KarloSource | None = None
        self.explicit = options.model is not None or options.weights is not None
        if self.explicit:
            self.source = resolve_karlo_source(
                options.model or KARLO_REPO,
                options.weights or "pretrained",
                options.base_dir,
                options.seed,
            )
            self.source.check(PIPELINE_PARTS)
        self.pipeline = None
        self.device = "cpu"

    @property
    def random_weights(self) -> bool:
        """True when the pipeline's weights are random (``weights: random``, asked for explicitly)."""
        return bool(self.source is not None and self.source.random)

    # ------------------------------------------------------------------ compatibility

    def check_target(self, target) -> str | None:
        if not isinstance(target, KarloTarget):
            return (
                f"unclip renders embeddings of Karlo's own image encoder, so it needs a karlo target "
                f"(this one is {type(target).__name__})"
            )
        if self.source is not None and target.source != self.source:
            return (
                f"the karlo target loads {target.source.as_dict()} but the visualizer {self.source.as_dict()}; "
                "both must use the same folder or hub repository and weights (leave the visualizer's model and "
                "weights out to follow the target)"
            )
        return None

    def bind(self, target) -> None:
        if self.source is None:
            self.source = target.source
            self.source.check(PIPELINE_PARTS)

    def _require_source(self) -> KarloSource:
        if self.source is None:
            raise RuntimeError("unclip: no Karlo source; the runner binds one from the karlo target")
        return self.source

    # ------------------------------------------------------------------ building

    def load(self, device: str = "cpu") -> None:
        import torch
        from diffusers import UnCLIPScheduler, UNet2DConditionModel, UNet2DModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the pipeline lives under diffusers' deprecated pipelines
            from diffusers.pipelines.deprecated.unclip import (
                UnCLIPImageVariationPipeline,
            )
            from diffusers.pipelines.deprecated.unclip.text_proj import (
                UnCLIPTextProjModel,
            )

        src = self._require_source()
        parts = {
            **load_clip_parts(src),
            "text_proj": load_part(src, "text_proj", UnCLIPTextProjModel),
            "decoder": load_part(src, "decoder", UNet2DConditionModel),
            "super_res_first": load_part(src, "super_res_first", UNet2DModel),
            "super_res_last": load_part(src, "super_res_last", UNet2DModel),
            "decoder_scheduler": load_part(src, "decoder_scheduler", UnCLIPScheduler),
            "super_res_scheduler": load_part(src, "super_res_scheduler", UnCLIPScheduler),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pipeline = UnCLIPImageVariationPipeline(**parts)
            except (TypeError, ValueError) as exc:
                raise WeightsError(f"the Karlo components from {src.location} do not form a pipeline: {exc}") from exc
        pipeline.set_progress_bar_config(disable=True)
        for module in (parts["image_encoder"], parts["text_encoder"], parts["text_proj"], parts["decoder"],
                       parts["super_res_first"], parts["super_res_last"]):
            module.eval()
        self.pipeline = pipeline.to(torch.device(device))
        self.device = device

    # ------------------------------------------------------------------ rendering

    def noise(self, seed: int) -> dict[str, Any]:
        """The noise of one render: explicit initial latents of both stages and the
        generator of the schedulers' step noise, all from ``seed``."""
        import torch

        pipe = self.pipeline
        dtype = next(pipe.decoder.parameters()).dtype
        latents = torch.Generator("cpu").manual_seed(int(seed))
        dec = pipe.decoder.config
        sr = pipe.super_res_first.config
        # unit noise: the pipeline itself scales it by each scheduler's init_noise_sigma
        decoder_latents = torch.randn((1, dec.in_channels, dec.sample_size, dec.sample_size), generator=latents, dtype=dtype)
        super_res_latents = torch.randn(
            (1, sr.in_channels // 2, sr.sample_size, sr.sample_size), generator=latents, dtype=dtype
        )
        return {
            "decoder_latents": decoder_latents.to(self.device),
            "super_res_latents": super_res_latents.to(self.device),
            "generator": torch.Generator("cpu").manual_seed(int(seed) ^ _STEP_NOISE),
        }

    def render_one(self, embedding: np.ndarray, seed: int):
        """One n-vector -> one ``PIL.Image``, deterministic in (embedding, seed)."""
        import torch

        if self.pipeline is None:
            raise RuntimeError("unclip: call load(device) before render")
        pipe = self.pipeline
        dtype = next(pipe.decoder.parameters()).dtype
        emb = torch.as_tensor(np.asarray(embedding, dtype=np.float64).reshape(1, -1)).to(self.device, dtype)
        width = int(pipe.image_encoder.config.projection_dim)
        if emb.shape[1] != width:
            raise ValueError(f"unclip: embeddings have {emb.shape[1]} dimensions, the pipeline's image space {width}")
        o = self.options
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = pipe(
                image_embeddings=emb,
                decoder_num_inference_steps=o.decoder_steps,
                super_res_num_inference_steps=o.super_res_steps,
                decoder_guidance_scale=o.guidance_scale,
                output_type="pil",
                **self.noise(seed),
            )
        return out.images[0]

    def render(self, original: np.ndarray, equivalent: np.ndarray, seeds: list[int]) -> list[tuple[Any, Any]]:
        original = np.atleast_2d(np.asarray(original, dtype=np.float64))
        equivalent = np.atleast_2d(np.asarray(equivalent, dtype=np.float64))
        if original.shape != equivalent.shape or original.shape[0] != len(seeds):
            raise ValueError(
                f"unclip: {original.shape[0]} original and {equivalent.shape[0]} equivalent embeddings, "
                f"{len(seeds)} seeds: give one seed per pair"
            )
        return [(self.render_one(o, s), self.render_one(e, s)) for o, e, s in zip(original, equivalent, seeds)]

    # ------------------------------------------------------------------ provenance

    def describe(self) -> dict[str, Any]:
        src = self._require_source()
        o = self.options
        return {
            "plugin": self.plugin_name,
            "source": src.as_dict(),
            "weights_digest": parts_digest(src, PIPELINE_PARTS),
            "random_weights": src.random,
            "decoder_steps": o.decoder_steps,
            "super_res_steps": o.super_res_steps,
            "guidance_scale": o.guidance_scale,
            "noise": "per-render cpu generators: latents from seed, step noise from seed ^ 0x5EED0F57E9",
            "diffusers_version": metadata.version("diffusers"),  # not an import of diffusers
        }


@hookimpl
def register_visualizers(register):
    register("unclip", UnclipVisualizer)
