"""How each model family lays its image tokens out: data, one row per model class.

The analyzer needs the latents a step receives as image tokens [B, N, C] in the order of
the model's sequence (frames first, then row-major over the patch grid) and the grid
(frames, h, w). Each family's input layout says how to get them; nothing here copies a
model's forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class TokenGeometry:
    """family: preset name; layout of `hidden_states`:
         "packed"   [B, N, C] already tokens (FLUX), grid from `img_ids` (row, col in columns 1, 2)
         "image"    [B, C, H, W] cut into p x p patches (SD3, PixArt, DiT)
         "video_cf" [B, C, F, H, W] cut into pt x ph x pw patches (Wan)
         "video_fc" [B, F, C, H, W] cut into pt x ph x pw patches (CogVideoX)
    """
    family: str
    layout: str


GEOMETRY = {
    "FluxTransformer2DModel": TokenGeometry("flux", "packed"),
    "SD3Transformer2DModel": TokenGeometry("sd3", "image"),
    "PixArtTransformer2DModel": TokenGeometry("pixart", "image"),
    "DiTTransformer2DModel": TokenGeometry("dit", "image"),
    "WanTransformer3DModel": TokenGeometry("wan", "video_cf"),
    "CogVideoXTransformer3DModel": TokenGeometry("cogvideox", "video_fc"),
}


def geometry_for(module: Optional[torch.nn.Module]) -> Optional[TokenGeometry]:
    """The geometry of `module`'s class or of the nearest base class listed in `GEOMETRY`
    (a subclass of a known transformer lays its tokens out the same way)."""
    if module is None:
        return None
    return next((GEOMETRY[c.__name__] for c in type(module).__mro__ if c.__name__ in GEOMETRY), None)


def _patch(module) -> tuple[int, int, int]:
    """(pt, ph, pw) from the model's config."""
    cfg = getattr(module, "config", None)
    p = getattr(cfg, "patch_size", 1) or 1
    if isinstance(p, (tuple, list)):
        return tuple(int(x) for x in p) if len(p) == 3 else (1, int(p[0]), int(p[1]))
    pt = getattr(cfg, "patch_size_t", None) or 1
    return (int(pt), int(p), int(p))


def image_tokens(geometry: TokenGeometry, module, hidden_states: torch.Tensor,
                 img_ids: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """hidden_states as image tokens [B, N, C'] and the grid (frames, h, w)."""
    x = hidden_states
    if geometry.layout == "packed":
        b, n, c = x.shape
        if img_ids is not None and img_ids.numel():
            ids = img_ids.reshape(-1, img_ids.shape[-1])
            h, w = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
        else:
            h = w = math.isqrt(n)
        if h * w != n:
            raise ValueError(f"cannot place {n} packed tokens on a {h}x{w} grid")
        return x, (1, h, w)
    pt, ph, pw = _patch(module)
    if geometry.layout == "image":
        x = x.unsqueeze(2)                         # [B, C, 1, H, W]
        pt = 1
    elif geometry.layout == "video_fc":
        x = x.transpose(1, 2)                      # [B, C, F, H, W]
    b, c, f, h, w = x.shape
    grid = (f // pt, h // ph, w // pw)
    x = x[:, :, :grid[0] * pt, :grid[1] * ph, :grid[2] * pw]
    x = x.reshape(b, c, grid[0], pt, grid[1], ph, grid[2], pw)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, grid[0] * grid[1] * grid[2], c * pt * ph * pw)
    return x, grid
