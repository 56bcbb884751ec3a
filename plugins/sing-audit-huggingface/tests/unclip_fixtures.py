"""A tiny random Karlo image-variation pipeline, saved in the hub's layout.

Real architectures (CLIP towers, UNets, UnCLIP text projection and schedulers), shrunk:
a 16-dim image space, a 16 px decoder, a 32 px super-resolution stage, a byte-level
tokenizer built without files. Built once per test session.
"""

from __future__ import annotations

import warnings
from pathlib import Path

EMBED_DIM = 16
IMAGE_SIZE = 32


def byte_vocab() -> dict[str, int]:
    """A CLIP-style byte-level vocabulary: the 256 byte symbols, each also as a word end."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def build_tiny_karlo(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random Karlo pipeline into ``folder`` (one subfolder per component)."""
    import torch
    from diffusers import UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer(vocab=byte_vocab(), merges=[], model_max_length=77)
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, projection_dim=EMBED_DIM, max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            projection_dim=EMBED_DIM, image_size=IMAGE_SIZE, patch_size=8,
        )
    )
    processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    text_proj = UnCLIPTextProjModel(
        clip_extra_context_tokens=2, clip_embeddings_dim=EMBED_DIM, time_embed_dim=32, cross_attention_dim=16
    )
    decoder = UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(8, 16), layers_per_block=1,
        cross_attention_dim=16, attention_head_dim=4, resnet_time_scale_shift="scale_shift",
        class_embed_type="identity", norm_num_groups=4,
    )

    def super_res():
        return UNet2DModel(
            sample_size=32, layers_per_block=1, in_channels=6, out_channels=3, block_out_channels=(8, 16),
            down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
            up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"), norm_num_groups=4,
        )

    parts = {
        "image_encoder": image_encoder,
        "feature_extractor": processor,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_proj": text_proj,
        "decoder": decoder,
        "super_res_first": super_res(),
        "super_res_last": super_res(),
        "decoder_scheduler": UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        "super_res_scheduler": UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        part.save_pretrained(folder / name)
    return folder



def tiny_cnn(num_classes: int = 3, width: int = 16):
    """A small classifier for end-to-end runs: ``width`` features into the linear layer ``head``."""
    from torch import nn

    class TinyCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(self.body(x))

    return TinyCNN()
