"""The DINO / DINOv2 forward pass as the original projects run it: position embeddings
interpolated their way, the last blocks' tokens, and the linear-evaluation features of a
:class:`~sing_audit_timm.dino_layouts.Layout`."""

from __future__ import annotations

import math

from sing_audit.errors import ConfigError

from .dino_layouts import Layout

__all__ = ["block_outputs", "check_vit_structure", "interpolate_patch_pos_embed", "layout_features", "native_grid_side"]


def interpolate_patch_pos_embed(pos, native_grid: tuple[int, int], grid: tuple[int, int], image_hw: tuple[int, int], mode: str):
    """Patch position embeddings (1×N×D, native grid) for ``grid``, as the original models do.

    ``mode="offset"``: DINO / DINOv2 ``interpolate_pos_encoding``: bicubic with scale
    factor ``(n + 0.1) / N``, no antialiasing. ``mode="size"``: DINOv2 with registers
    (``interpolate_offset=0``): bicubic to the exact size, antialiased. Like the
    originals, nothing is interpolated when the token count matches and the image is square.
    """
    import torch.nn.functional as F

    gh, gw = native_grid
    h, w = grid
    if h * w == gh * gw and image_hw[0] == image_hw[1]:
        return pos
    dim = pos.shape[-1]
    p = pos.float().reshape(1, gh, gw, dim).permute(0, 3, 1, 2)
    if mode == "offset":
        p = F.interpolate(p, scale_factor=((h + 0.1) / gh, (w + 0.1) / gw), mode="bicubic", antialias=False)
    else:
        p = F.interpolate(p, size=(h, w), mode="bicubic", antialias=True)
    if tuple(p.shape[-2:]) != (h, w):  # pragma: no cover - guarded by the offset
        raise RuntimeError(f"position embedding interpolated to {tuple(p.shape[-2:])}, expected {(h, w)}")
    return p.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos.dtype)


def block_outputs(model, x, n: int, pos_embed_mode: str, name: str):
    """Outputs of the last ``n`` blocks of the timm ViT ``model`` (before the final norm) on
    images ``x``, tokens ``[cls, registers…, patches…]``, with the position embedding
    interpolated as the original project does (``pos_embed_mode``, see
    :func:`interpolate_patch_pos_embed`)."""
    import torch

    t = model.patch_embed.proj(x)
    grid = (int(t.shape[-2]), int(t.shape[-1]))
    t = t.flatten(2).transpose(1, 2)
    t = model.patch_embed.norm(t)
    pos = model.pos_embed
    n_pos_prefix = 0 if model.no_embed_class else int(model.num_prefix_tokens)
    native = tuple(int(g) for g in model.patch_embed.grid_size)
    patch_pos = interpolate_patch_pos_embed(
        pos[:, n_pos_prefix:], native, grid, (int(x.shape[-2]), int(x.shape[-1])), pos_embed_mode
    )
    prefix = [model.cls_token.expand(t.shape[0], -1, -1)]
    if model.reg_token is not None:
        prefix.append(model.reg_token.expand(t.shape[0], -1, -1))
    if model.no_embed_class:
        t = torch.cat(prefix + [t + patch_pos], dim=1)
    else:
        t = torch.cat(prefix + [t], dim=1) + torch.cat([pos[:, :n_pos_prefix], patch_pos], dim=1)
    t = model.norm_pre(model.patch_drop(model.pos_drop(t)))
    depth = len(model.blocks)
    if n > depth:
        raise ConfigError(f"layout needs the last {n} blocks but {name!r} has {depth}")
    outs = []
    for i, blk in enumerate(model.blocks):
        t = blk(t)
        if i >= depth - n:
            outs.append(t)
    return outs


def layout_features(model, outputs, layout: Layout):
    """The classifier input of ``layout`` from the last blocks' ``outputs`` (:func:`block_outputs`)."""
    import torch

    with torch.no_grad():
        normed = [model.norm(o) for o in outputs]
        parts = [o[:, 0] for o in normed]
        if not layout.avgpool:
            return torch.cat(parts, dim=-1)
        patches = normed[-1][:, int(model.num_prefix_tokens):]
        avg = patches.mean(dim=1)
        if layout.interleave:  # DINO: cat((cls.unsqueeze(-1), avg.unsqueeze(-1)), -1).reshape(B, -1)
            return torch.stack([parts[-1], avg], dim=-1).reshape(avg.shape[0], -1)
        return torch.cat(parts + [avg], dim=-1)


def check_vit_structure(model, name: str) -> None:
    """A :class:`ConfigError` unless ``model`` is a timm ViT with a class token and learned
    absolute position embeddings, as the forward pass here needs."""
    from timm.models.vision_transformer import VisionTransformer

    problems = []
    if not isinstance(model, VisionTransformer):
        problems.append(f"it is a {type(model).__name__}, not a timm VisionTransformer")
    else:
        if getattr(model, "cls_token", None) is None:
            problems.append("it has no class token")
        if getattr(model, "pos_embed", None) is None:
            problems.append("it has no absolute position embedding")
        if getattr(model, "dynamic_img_pad", False):
            problems.append("it pads images dynamically")
    if problems:
        raise ConfigError(
            f"dino_vit needs a ViT with a class token and learned position embeddings (DINO, DINOv2); "
            f"model {name!r} does not fit: {'; '.join(problems)}"
        )


def native_grid_side(state_dict, meta, prefix_with_pos: int | None = None) -> int | None:
    """Native grid side implied by a state dict's position embedding."""
    pos = state_dict.get("pos_embed")
    if pos is None or pos.ndim != 3:
        return None
    prefix = prefix_with_pos
    if prefix is None:
        prefix = 0 if getattr(meta, "no_embed_class", False) else int(meta.num_prefix_tokens)
    n = int(pos.shape[1]) - prefix
    side = math.isqrt(max(n, 0))
    return side if side * side == n else None
