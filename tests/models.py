"""Tiny random-weight diffusers DiTs for the tests, one builder per family (data, not forks).

Each builder takes (batch, size) keyword arguments and returns (model, kwargs, num_image_tokens);
`size` knobs let hypothesis draw token counts equal to a head dim or a text length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import diffusers as D
import torch


def _t(b, value=500.0):
    return torch.full((b,), value)


def flux(b=1, h=4, w=4, text=5, head_dim=16, heads=2, layers=1, single_layers=1):
    third = (head_dim // 3) // 2 * 2
    axes = (head_dim - 2 * third, third, third)
    m = D.FluxTransformer2DModel(patch_size=1, in_channels=8, num_layers=layers,
                                 num_single_layers=single_layers, attention_head_dim=head_dim,
                                 num_attention_heads=heads, joint_attention_dim=16,
                                 pooled_projection_dim=16, axes_dims_rope=axes)
    n = h * w
    img_ids = torch.zeros(n, 3)
    img_ids[:, 1] = torch.arange(n) // w
    img_ids[:, 2] = torch.arange(n) % w
    kw = dict(hidden_states=torch.randn(b, n, 8), encoder_hidden_states=torch.randn(b, text, 16),
              pooled_projections=torch.randn(b, 16), timestep=torch.full((b,), 0.5),
              img_ids=img_ids, txt_ids=torch.zeros(text, 3))
    return m, kw, n


def sd3(b=1, h=4, w=4, text=5, head_dim=8, heads=2, layers=2):
    m = D.SD3Transformer2DModel(sample_size=2 * max(h, w), patch_size=2, in_channels=4,
                                num_layers=layers, attention_head_dim=head_dim,
                                num_attention_heads=heads, joint_attention_dim=16,
                                caption_projection_dim=head_dim * heads, pooled_projection_dim=16,
                                out_channels=4, pos_embed_max_size=2 * max(h, w))
    kw = dict(hidden_states=torch.randn(b, 4, 2 * h, 2 * w), encoder_hidden_states=torch.randn(b, text, 16),
              pooled_projections=torch.randn(b, 16), timestep=_t(b))
    return m, kw, h * w


def pixart(b=1, h=4, w=4, text=6, head_dim=8, heads=2, layers=1):
    m = D.PixArtTransformer2DModel(num_attention_heads=heads, attention_head_dim=head_dim,
                                   in_channels=4, out_channels=8, num_layers=layers,
                                   cross_attention_dim=head_dim * heads, sample_size=2 * max(h, w),
                                   patch_size=2, caption_channels=16, norm_type="ada_norm_single",
                                   use_additional_conditions=False)
    kw = dict(hidden_states=torch.randn(b, 4, 2 * h, 2 * w), encoder_hidden_states=torch.randn(b, text, 16),
              timestep=_t(b), added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    return m, kw, h * w


def dit(b=1, h=4, w=4, text=0, head_dim=8, heads=2, layers=1):
    m = D.DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4,
                                out_channels=8, num_layers=layers, sample_size=2 * h, patch_size=2,
                                num_embeds_ada_norm=10)
    kw = dict(hidden_states=torch.randn(b, 4, 2 * h, 2 * h), timestep=torch.full((b,), 500, dtype=torch.long),
              class_labels=torch.randint(0, 10, (b,)))
    return m, kw, h * h


def wan(b=1, h=4, w=4, text=5, head_dim=12, heads=2, layers=1, frames=2):
    m = D.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
                                in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32,
                                num_layers=layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                rope_max_seq_len=32)
    kw = dict(hidden_states=torch.randn(b, 4, frames, 2 * h, 2 * w), encoder_hidden_states=torch.randn(b, text, 16),
              timestep=_t(b))
    return m, kw, frames * h * w


def cogvideox(b=1, h=4, w=4, text=6, head_dim=8, heads=2, layers=1, frames=2, rope=False):
    """rope=True: the RoPE table [N, head_dim] comes in as an input and is applied in place
    to the image segment of the joint sequence (CogVideoX 1.5 style)."""
    m = D.CogVideoXTransformer3DModel(num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4,
                                      out_channels=4, time_embed_dim=4, text_embed_dim=16, num_layers=layers,
                                      sample_width=2 * w, sample_height=2 * h, sample_frames=4 * frames - 3,
                                      patch_size=2, temporal_compression_ratio=4, max_text_seq_length=text,
                                      use_rotary_positional_embeddings=rope)
    n = frames * h * w
    kw = dict(hidden_states=torch.randn(b, frames, 4, 2 * h, 2 * w), encoder_hidden_states=torch.randn(b, text, 16),
              timestep=_t(b))
    if rope:
        kw["image_rotary_emb"] = (torch.randn(n, head_dim), torch.randn(n, head_dim))
    return m, kw, n


def cogvideox_rope(**kwargs):
    return cogvideox(rope=True, **kwargs)


@dataclass(frozen=True)
class Family:
    build: Callable
    self_attention_per_layer: int     # as the architecture defines it (independent of jano)
    square_only: bool = False         # DiT's pos table assumes h == w


FAMILIES = {
    "flux": Family(flux, 1),
    "sd3": Family(sd3, 1),
    "pixart": Family(pixart, 1),
    "dit": Family(dit, 1, square_only=True),
    "wan": Family(wan, 1),
    "cogvideox": Family(cogvideox, 1),
    "cogvideox_rope": Family(cogvideox_rope, 1),
}


def cast(kw: dict, dtype) -> dict:
    def to(v):
        if isinstance(v, tuple):
            return tuple(to(x) for x in v)
        return v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
    return {k: (v if k == "timestep" else to(v)) for k, v in kw.items()}
