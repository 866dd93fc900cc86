"""Tiny random-weight instances of the 56 diffusers DiT classes of issue 11, as data.

Each entry of `TINY` holds a class name, its constructor arguments and a function that
builds the forward arguments for a batch size. The conventions, for every class where the
model allows them:
- at least two blocks of each block type the class has (double/single stream, refiners,
  text blocks);
- a non-square token grid (`GRID_H` x `GRID_W` tokens after patching; video: `FRAMES`
  latent frames of that grid);
- odd text lengths (`TEXT`, `TEXT_2`);
- prompt embeddings and conditioning tensors passed directly (no text encoder).
Where a class cannot take one of them (DiT's square position table, Kandinsky6SR's 8x8
attention tiles), the entry says so in `note`.

The configs started from `tests/models.py` and `tests/test_robustness.py` of this project
and from diffusers' own tests (`tests/models/transformers/test_models_transformer_*.py`),
then were read against each class's `__init__` and `forward` in diffusers 0.42.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import diffusers
import torch

GRID_H, GRID_W = 4, 6      # image tokens per column / row after patching (non-square)
FRAMES = 2                 # latent frames of the video models (after temporal patching)
TEXT, TEXT_2 = 7, 5        # text lengths (odd)


@dataclass(frozen=True)
class TinyModel:
    """cls: the diffusers class name; init: its constructor arguments;
    inputs(batch) -> forward keyword arguments in fp32 (the caller casts);
    keep_fp32: names of inputs that stay fp32 when the model runs in bf16 (timesteps, as
        most pipelines pass them; `CAST_ALL` where the pipeline casts the timestep too);
    note: what the config could not follow of the conventions above, and why."""
    cls: str
    init: dict
    inputs: Callable[[int], dict]
    keep_fp32: frozenset = frozenset({"timestep", "timesteps", "t", "r_timestep", "timestep_r"})
    note: str = ""

    def build(self, batch: int):
        """(model in eval mode, forward kwargs) with fresh random weights and inputs."""
        model = getattr(diffusers, self.cls)(**self.init).eval()
        return model, self.inputs(batch)


CAST_ALL = frozenset()     # keep_fp32 of models whose time embedding expects the model dtype


# --------------------------------------------------------------------------- helpers
def _t(b, value=500.0):
    return torch.full((b,), value)


def _randn(*shape):
    return torch.randn(*shape)


def _ids_3(h=GRID_H, w=GRID_W, frames=1):
    """FLUX-style position ids [frames * h * w, 3]: (frame, row, column)."""
    f, r, c = torch.meshgrid(torch.arange(frames), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([f, r, c], dim=-1).reshape(-1, 3).float()


def _ids_4(h=GRID_H, w=GRID_W):
    """FLUX.2-style position ids [h * w, 4]: (t, h, w, l)."""
    return torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1))


def _text_ids_4(text=TEXT):
    return torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(text))


def _image(b, c, p=2, h=GRID_H, w=GRID_W):
    """Latents [B, C, p*h, p*w]."""
    return _randn(b, c, p * h, p * w)


def _video(b, c, p=2, frames=FRAMES, h=GRID_H, w=GRID_W, pt=1):
    """Latents [B, C, F, p*h, p*w]."""
    return _randn(b, c, pt * frames, p * h, p * w)


# --------------------------------------------------------------------------- inputs per family
def _flux_like(in_ch, txt_dim, pooled=None, guidance=False, img_ids_batched=False):
    def inputs(b):
        n = GRID_H * GRID_W
        kw = dict(hidden_states=_randn(b, n, in_ch), encoder_hidden_states=_randn(b, TEXT, txt_dim),
                  timestep=torch.full((b,), 0.5), img_ids=_ids_3(), txt_ids=torch.zeros(TEXT, 3))
        if pooled:
            kw["pooled_projections"] = _randn(b, pooled)
        if guidance:
            kw["guidance"] = torch.full((b,), 3.5)
        return kw
    return inputs


def _wan_like(in_ch, text_dim, **extra):
    def inputs(b):
        kw = dict(hidden_states=_video(b, in_ch), encoder_hidden_states=_randn(b, TEXT, text_dim),
                  timestep=_t(b))
        kw.update({k: v(b) for k, v in extra.items()})
        return kw
    return inputs


def _allegro(b):
    return dict(hidden_states=_video(b, 4), encoder_hidden_states=_randn(b, TEXT, 8), timestep=_t(b))


def _anyflow(b):
    return dict(hidden_states=_randn(b, FRAMES, 4, 2 * GRID_H, 2 * GRID_W),
                timestep=torch.full((b, FRAMES), 500.0), r_timestep=torch.full((b, FRAMES), 250.0),
                encoder_hidden_states=_randn(b, TEXT, 16))


def _auraflow(b):
    return dict(hidden_states=_image(b, 4), encoder_hidden_states=_randn(b, TEXT, 32), timestep=_t(b))


def _bria_fibo(b):
    ehs = _randn(b, TEXT, 64)
    return dict(hidden_states=_randn(b, GRID_H * GRID_W, 16), encoder_hidden_states=ehs,
                text_encoder_layers=[_randn(b, TEXT, 32) for _ in range(4)],
                timestep=torch.full((b,), 1.0), img_ids=_ids_3(), txt_ids=torch.zeros(TEXT, 3))


def _cogvideox(b):
    return dict(hidden_states=_randn(b, FRAMES, 4, 2 * GRID_H, 2 * GRID_W),
                encoder_hidden_states=_randn(b, TEXT, 16), timestep=_t(b))


def _cogview(b, text_dim=8):
    size = torch.tensor([[16 * GRID_H, 16 * GRID_W]] * b)
    return dict(hidden_states=_image(b, 4), encoder_hidden_states=_randn(b, TEXT, text_dim), timestep=_t(b),
                original_size=size, target_size=size.clone(), crop_coords=torch.zeros(b, 2, dtype=torch.long))


def _consisid(b):
    return dict(hidden_states=_randn(b, FRAMES, 4, 2 * GRID_H, 2 * GRID_W),
                encoder_hidden_states=_randn(b, TEXT, 8), timestep=_t(b),
                id_vit_hidden=[torch.ones(b, 2, 2)], id_cond=torch.ones(b, 2))


def _cosmos(b):
    return dict(hidden_states=_video(b, 4), timestep=_t(b), encoder_hidden_states=_randn(b, TEXT, 16))


def _dit(b):
    return dict(hidden_states=_image(b, 4, h=GRID_H, w=GRID_H), timestep=torch.full((b,), 500, dtype=torch.long),
                class_labels=torch.randint(0, 10, (b,)))


def _easyanimate(b):
    return dict(hidden_states=_video(b, 4), timestep=_t(b), encoder_hidden_states=_randn(b, TEXT, 16))


def _ernie(b):
    return dict(hidden_states=_image(b, 4, p=1), timestep=_t(b), text_bth=_randn(b, TEXT, 16),
                text_lens=torch.full((b,), TEXT))


def _flux2(b):
    n = GRID_H * GRID_W
    return dict(hidden_states=_randn(b, n, 4), encoder_hidden_states=_randn(b, TEXT, 32),
                img_ids=_ids_4().unsqueeze(0).expand(b, -1, -1), txt_ids=_text_ids_4().unsqueeze(0).expand(b, -1, -1),
                timestep=torch.full((b,), 1.0), guidance=torch.full((b,), 1.0))


def _flux3(b):
    n = GRID_H * GRID_W
    return dict(hidden_states=_randn(b, n, 8), encoder_hidden_states=_randn(b, TEXT, 32),
                timestep=torch.full((b,), 0.5), img_ids=_ids_4(), txt_ids=_text_ids_4())


def _glm_image(b):
    n = GRID_H * GRID_W
    return dict(hidden_states=_image(b, 4), encoder_hidden_states=_randn(b, TEXT, 32),
                prior_token_id=torch.randint(0, 64, (b, n)), prior_token_drop=torch.zeros(b, dtype=torch.bool),
                timestep=_t(b), target_size=torch.tensor([[16.0 * GRID_H, 16.0 * GRID_W]] * b),
                crop_coords=torch.zeros(b, 2))


def _helios(b):
    c = 4
    return dict(
        hidden_states=_video(b, c), timestep=_t(b), encoder_hidden_states=_randn(b, TEXT, 16),
        indices_hidden_states=torch.ones(b, FRAMES),
        indices_latents_history_short=torch.ones(b, FRAMES - 1),
        indices_latents_history_mid=torch.ones(b, FRAMES - 1),
        indices_latents_history_long=torch.ones(b, (FRAMES - 1) * 4),
        latents_history_short=_video(b, c, frames=FRAMES - 1),
        latents_history_mid=_video(b, c, frames=FRAMES - 1),
        latents_history_long=_video(b, c, frames=(FRAMES - 1) * 4))


def _hidream(b):
    return dict(hidden_states=_image(b, 4), encoder_hidden_states_t5=_randn(b, TEXT, 8),
                encoder_hidden_states_llama3=_randn(2, b, TEXT_2, 4), pooled_embeds=_randn(b, 8),
                timesteps=_t(b))


def _hunyuan_dit(b):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    head_dim = 8
    rope = get_2d_rotary_pos_embed(head_dim, ((0, 0), (GRID_H, GRID_W)), (GRID_H, GRID_W), output_type="pt")
    return dict(hidden_states=_image(b, 4), timestep=_t(b), encoder_hidden_states=_randn(b, TEXT, 8),
                text_embedding_mask=torch.ones(b, TEXT), encoder_hidden_states_t5=_randn(b, TEXT_2, 8),
                text_embedding_mask_t5=torch.ones(b, TEXT_2),
                image_meta_size=torch.tensor([[1024, 1024, 16 * GRID_H, 16 * GRID_W, 0, 0]] * b, dtype=torch.float32),
                style=torch.zeros(b, dtype=torch.long), image_rotary_emb=tuple(rope))


def _hunyuan_image(b):
    return dict(hidden_states=_image(b, 4, p=1), timestep=_t(b), encoder_hidden_states=_randn(b, TEXT, 16),
                encoder_attention_mask=torch.ones(b, TEXT))


def _hunyuan_video15(b):
    return dict(hidden_states=_video(b, 4, p=1), timestep=torch.full((b,), 1.0),
                encoder_hidden_states=_randn(b, TEXT, 16), encoder_attention_mask=torch.ones(b, TEXT),
                encoder_hidden_states_2=_randn(b, TEXT_2, 8), encoder_attention_mask_2=torch.ones(b, TEXT_2),
                image_embeds=torch.zeros(b, 3, 12))


def _hunyuan_video(b, p=1):
    return dict(hidden_states=_video(b, 4, p=p), timestep=_t(b), encoder_hidden_states=_randn(b, TEXT, 16),
                pooled_projections=_randn(b, 8), encoder_attention_mask=torch.ones(b, TEXT),
                guidance=torch.full((b,), 3500.0))


def _framepack(b):
    c, f = 4, FRAMES
    kw = _hunyuan_video(b, p=2)
    kw.update(image_embeds=_randn(b, TEXT, 16), indices_latents=torch.arange(f),
              latents_clean=_video(b, c, frames=f - 1), indices_latents_clean=torch.arange(f - 1),
              latents_history_2x=_video(b, c, frames=f - 1), indices_latents_history_2x=torch.arange(f - 1),
              latents_history_4x=_video(b, c, frames=(f - 1) * 4),
              indices_latents_history_4x=torch.arange((f - 1) * 4))
    return kw


def _ideogram4(b):
    from diffusers.models.transformers.transformer_ideogram4 import (
        IMAGE_POSITION_OFFSET, LLM_TOKEN_INDICATOR, OUTPUT_IMAGE_INDICATOR)
    text, n, in_ch, llm = TEXT, GRID_H * GRID_W, 16, 24
    seq = text + n
    hidden = torch.zeros(b, seq, in_ch)
    hidden[:, text:] = _randn(b, n, in_ch)
    ehs = torch.zeros(b, seq, llm)
    ehs[:, :text] = _randn(b, text, llm)
    pos = torch.zeros(b, seq, 3, dtype=torch.long)
    pos[:, :text] = torch.arange(text)[:, None]
    grid = _ids_3().long()
    pos[:, text:, 0] = IMAGE_POSITION_OFFSET
    pos[:, text:, 1] = grid[:, 1] + IMAGE_POSITION_OFFSET
    pos[:, text:, 2] = grid[:, 2] + IMAGE_POSITION_OFFSET
    indicator = torch.full((b, seq), OUTPUT_IMAGE_INDICATOR, dtype=torch.long)
    indicator[:, :text] = LLM_TOKEN_INDICATOR
    return dict(hidden_states=hidden, encoder_hidden_states=ehs, timestep=torch.full((b,), 0.5),
                position_ids=pos, segment_ids=torch.ones(b, seq, dtype=torch.long), indicator=indicator)


def _joyimage(b):
    return dict(hidden_states=_video(b, 16, frames=1), encoder_hidden_states=_randn(b, TEXT, 16),
                timestep=torch.full((b,), 1.0))


def _kandinsky5(b):
    return dict(hidden_states=_randn(b, FRAMES, 2 * GRID_H, 2 * GRID_W, 4), encoder_hidden_states=_randn(b, TEXT, 16),
                timestep=_t(b), pooled_projections=_randn(b, 8),
                visual_rope_pos=[torch.arange(FRAMES), torch.arange(GRID_H), torch.arange(GRID_W)],
                text_rope_pos=torch.arange(TEXT))


def _kandinsky6(b):
    return dict(hidden_states=_randn(b, FRAMES, 2 * GRID_H, 2 * GRID_W, 4), encoder_hidden_states=_randn(b, TEXT, 16),
                pooled_projections=_randn(b, 8), timestep=_t(b))


def _kandinsky6_sr(b):
    # NABLA attention tiles the token grid in 8 x 8 blocks: the smallest non-square grid is 8 x 16
    return dict(hidden_states=_randn(b, 1, 8, 16, 2 * 4 + 1), timestep=_t(b))


def _krea2(b):
    n = GRID_H * GRID_W
    pos = torch.zeros(TEXT + n, 3)
    pos[TEXT:, 1:] = _ids_3()[:, 1:]
    mask = torch.ones(b, TEXT, dtype=torch.bool)
    mask[:, -1] = False
    return dict(hidden_states=_randn(b, n, 16), encoder_hidden_states=_randn(b, TEXT, 3, 16),
                timestep=torch.full((b,), 0.5), position_ids=pos, encoder_attention_mask=mask)


def _ltx(b):
    return dict(hidden_states=_randn(b, FRAMES * GRID_H * GRID_W, 4), encoder_hidden_states=_randn(b, TEXT, 16),
                timestep=_t(b), encoder_attention_mask=torch.ones(b, TEXT, dtype=torch.bool),
                num_frames=FRAMES, height=GRID_H, width=GRID_W)


def _ltx2(b):
    audio_frames = 9
    kw = _ltx(b)
    kw.update(audio_hidden_states=_randn(b, audio_frames, 4), audio_encoder_hidden_states=_randn(b, TEXT, 16),
              audio_num_frames=audio_frames, fps=25.0)
    return kw


def _latte(b):
    return dict(hidden_states=_video(b, 4), timestep=_t(b), encoder_hidden_states=_randn(b, TEXT, 16))


def _lumina2(b):
    return dict(hidden_states=_image(b, 4), timestep=torch.full((b,), 0.5), encoder_hidden_states=_randn(b, TEXT, 32),
                encoder_attention_mask=torch.ones(b, TEXT, dtype=torch.bool))


def _lumina_next(b):
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina
    return dict(hidden_states=_image(b, 4), timestep=torch.full((b,), 0.5), encoder_hidden_states=_randn(b, TEXT, 32),
                encoder_mask=torch.ones(b, TEXT), image_rotary_emb=get_2d_rotary_pos_embed_lumina(8, 384, 384),
                cross_attention_kwargs={})


def _minimax_h3(b):
    text, audio, n = TEXT, 5, FRAMES * GRID_H * GRID_W
    seq = text + audio + n
    text_idx = torch.arange(text)
    audio_idx = torch.arange(text, text + audio)
    video_idx = torch.arange(text + audio, seq)
    tags = torch.zeros(seq, dtype=torch.long)
    tags[text_idx], tags[audio_idx] = 1, 2
    t_idx = torch.zeros(seq, dtype=torch.long)
    t_idx[audio_idx] = 1
    pos = torch.zeros(seq, 3)
    pos[:, 0] = torch.arange(seq, dtype=torch.float32)
    pos[video_idx] = _ids_3(frames=FRAMES)
    return dict(hidden_states=_randn(b, n, 16), audio_hidden_states=_randn(b, audio, 6),
                encoder_hidden_states=_randn(b, text, 8), timestep=torch.tensor([0.7, 0.3]),
                timestep_indices=t_idx, token_tags=tags, position_ids=pos, video_indices=video_idx,
                audio_indices=audio_idx, text_indices=text_idx)


def _mochi(b):
    return dict(hidden_states=_video(b, 4), encoder_hidden_states=_randn(b, TEXT, 16), timestep=_t(b),
                encoder_attention_mask=torch.ones(b, TEXT, dtype=torch.bool))


def _motif(b):
    return dict(hidden_states=_video(b, 9, p=1), encoder_hidden_states=_randn(b, TEXT, 32), timestep=_t(b))


def _nucleus(b):
    return dict(hidden_states=_randn(b, GRID_H * GRID_W, 16), encoder_hidden_states=_randn(b, TEXT, 16),
                encoder_hidden_states_mask=torch.ones(b, TEXT, dtype=torch.long), timestep=torch.full((b,), 1.0),
                img_shapes=[(1, GRID_H, GRID_W)] * b)


def _omnigen(b):
    n = GRID_H * GRID_W
    seq = TEXT + 1 + n
    return dict(hidden_states=_image(b, 4), timestep=torch.full((b,), 0.5),
                input_ids=torch.randint(0, 10, (b, TEXT)), input_img_latents=[], input_image_sizes={},
                attention_mask=torch.ones(b, seq, seq), position_ids=torch.arange(seq).repeat(b, 1))


def _prx(b):
    return dict(hidden_states=_image(b, 16), timestep=torch.full((b,), 1.0), encoder_hidden_states=_randn(b, TEXT, 16))


def _pixart(b):
    return dict(hidden_states=_image(b, 4), encoder_hidden_states=_randn(b, TEXT, 16), timestep=_t(b),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None})


def _qwen21(b):
    # one target image of GRID_H x GRID_W latent tokens after TEXT_2 text positions
    # (each vision-language slot stands for 2 x 2 latent tokens)
    n = GRID_H * GRID_W
    img_mask = torch.zeros(b, TEXT_2 + n // 4, dtype=torch.bool)
    img_mask[:, TEXT_2:] = True
    return dict(hidden_states=_randn(b, n, 8), encoder_hidden_states=_randn(b, TEXT_2, 16),
                timestep=torch.full((b,), 0.5), img_shapes=[[(1, GRID_H, GRID_W)]] * b, img_mask=img_mask)


def _qwen(b):
    return dict(hidden_states=_randn(b, GRID_H * GRID_W, 16), encoder_hidden_states=_randn(b, TEXT, 16),
                encoder_hidden_states_mask=torch.ones(b, TEXT, dtype=torch.long), timestep=torch.full((b,), 1.0),
                img_shapes=[(1, GRID_H, GRID_W)] * b)


def _sd3(b):
    return dict(hidden_states=_image(b, 4), encoder_hidden_states=_randn(b, TEXT, 16),
                pooled_projections=_randn(b, 16), timestep=_t(b))


def _sana(b, p=1):
    return dict(hidden_states=_image(b, 4, p=p), encoder_hidden_states=_randn(b, TEXT, 8), timestep=_t(b))


def _sana_video(b):
    return dict(hidden_states=_video(b, 16), encoder_hidden_states=_randn(b, TEXT, 16), timestep=_t(b))


def _wan_animate(b):
    # 3 latent frames = 2 pose frames + 1 reference; 5 face frames of 16 x 16 pixels (motion_encoder_size)
    return dict(hidden_states=_video(b, 12, frames=3), timestep=_t(b), encoder_hidden_states=_randn(b, TEXT, 16),
                pose_hidden_states=_video(b, 4, frames=2), face_pixel_values=_randn(b, 3, 5, 16, 16))


def _z_image(b):
    return dict(x=[_randn(16, 1, 2 * GRID_H, 2 * GRID_W) for _ in range(b)],
                cap_feats=[_randn(TEXT, 16) for _ in range(b)], t=torch.full((b,), 0.5))


# --------------------------------------------------------------------------- the table
_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)

TINY_MODELS = [
    TinyModel("AllegroTransformer3DModel", dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=2,
        cross_attention_dim=16, sample_width=16, sample_height=16, sample_frames=8, caption_channels=8), _allegro),
    TinyModel("AnyFlowTransformer3DModel", dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True, rope_max_seq_len=32,
        gate_value=0.25, deltatime_type="r"), _anyflow),
    TinyModel("AuraFlowTransformer2DModel", dict(
        sample_size=16, patch_size=2, in_channels=4, num_mmdit_layers=2, num_single_dit_layers=2,
        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=32,
        out_channels=4, pos_embed_max_size=64), _auraflow),
    TinyModel("BriaFiboTransformer2DModel", dict(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=64, text_encoder_dim=32, pooled_projection_dim=None,
        axes_dims_rope=[0, 4, 4]), _bria_fibo),
    TinyModel("BriaTransformer2DModel", dict(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=None, axes_dims_rope=[0, 4, 4]),
        _flux_like(4, 32)),
    TinyModel("ChromaTransformer2DModel", dict(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 4, 8], approximator_num_channels=8,
        approximator_hidden_dim=16, approximator_layers=2), _flux_like(4, 32)),
    TinyModel("ChronoEditTransformer3DModel", dict(
        _WAN, attention_head_dim=12, rope_max_seq_len=64, rope_temporal_skip_len=8), _wan_like(4, 16)),
    TinyModel("CogVideoXTransformer3DModel", dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=4,
        text_embed_dim=16, num_layers=2, sample_width=2 * GRID_W, sample_height=2 * GRID_H,
        sample_frames=4 * FRAMES - 3, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=TEXT),
        _cogvideox),
    TinyModel("CogView3PlusTransformer2DModel", dict(
        patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=2, out_channels=4,
        text_embed_dim=8, time_embed_dim=8, condition_dim=2, pos_embed_max_size=8, sample_size=16), _cogview),
    TinyModel("CogView4Transformer2DModel", dict(
        patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=4, out_channels=4,
        text_embed_dim=8, time_embed_dim=8, condition_dim=4), _cogview),
    TinyModel("ConsisIDTransformer3DModel", dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=8, num_layers=2, sample_width=2 * GRID_W, sample_height=2 * GRID_H,
        sample_frames=4 * FRAMES - 3, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=TEXT,
        cross_attn_interval=1, is_kps=False, is_train_face=True, cross_attn_dim_head=1, cross_attn_num_heads=1,
        LFE_id_dim=2, LFE_vit_dim=2, LFE_depth=2, LFE_dim_head=8, LFE_num_heads=2, LFE_num_id_token=1,
        LFE_num_querie=1, LFE_output_dim=10, LFE_ff_mult=1, LFE_num_scale=1), _consisid),
    TinyModel("CosmosTransformer3DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2, mlp_ratio=2.0,
        text_embed_dim=16, adaln_lora_dim=8, max_size=(4, 16, 16), patch_size=(1, 2, 2),
        concat_padding_mask=False, extra_pos_embed_type="learnable"), _cosmos,
        note="concat_padding_mask=False: the padding mask is resized with torchvision, not installed"),
    TinyModel("DiTTransformer2DModel", dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        sample_size=2 * GRID_H, patch_size=2, num_embeds_ada_norm=10), _dit,
        note="square grid: the position table is built for sample_size x sample_size"),
    TinyModel("EasyAnimateTransformer3DModel", dict(
        attention_head_dim=16, num_attention_heads=2, in_channels=4, mmdit_layers=2, num_layers=2,
        out_channels=4, patch_size=2, sample_height=60, sample_width=90, text_embed_dim=16, time_embed_dim=8,
        time_position_encoding_type="3d_rope", timestep_activation_fn="silu"), _easyanimate),
    TinyModel("ErnieImageTransformer2DModel", dict(
        hidden_size=32, num_attention_heads=2, num_layers=2, ffn_hidden_size=64, in_channels=4, out_channels=4,
        patch_size=1, text_in_dim=16, rope_axes_dim=(4, 6, 6)), _ernie),
    TinyModel("Flux2Transformer2DModel", dict(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4]), _flux2),
    TinyModel("Flux3Transformer2DModel", dict(
        in_channels=8, cond_in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, timestep_channels=32, axes_dims_rope=(4, 4, 4, 4)), _flux3),
    TinyModel("FluxTransformer2DModel", dict(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
        _flux_like(16, 32, pooled=32)),
    TinyModel("GlmImageTransformer2DModel", dict(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        text_embed_dim=32, time_embed_dim=16, condition_dim=8, prior_vq_quantizer_codebook_size=64), _glm_image),
    TinyModel("HeliosTransformer3DModel", dict(
        {k: v for k, v in _WAN.items() if k != "rope_max_seq_len"}, rope_dim=(4, 4, 4),
        has_multi_term_memory_patch=True, guidance_cross_attn=True, zero_history_timestep=True,
        is_amplify_history=False), _helios),
    TinyModel("HiDreamImageTransformer2DModel", dict(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_channels=[8, 4], text_emb_dim=8, num_routed_experts=2,
        num_activated_experts=2, axes_dims_rope=(4, 2, 2), max_resolution=(32, 32), llama_layers=(0, 1, 0, 1),
        force_inference_output=True), _hidream),
    TinyModel("HunyuanDiT2DModel", dict(
        sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        cross_attention_dim=8, cross_attention_dim_t5=8, pooled_projection_dim=4, hidden_size=16,
        text_len=TEXT, text_len_t5=TEXT_2, activation_fn="gelu-approximate"), _hunyuan_dit,
        keep_fp32=CAST_ALL),
    TinyModel("HunyuanImageTransformer2DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_single_layers=2, num_refiner_layers=2, mlp_ratio=2.0, patch_size=(1, 1), text_embed_dim=16,
        rope_axes_dim=(4, 4)), _hunyuan_image, keep_fp32=CAST_ALL),
    TinyModel("HunyuanVideo15Transformer3DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_refiner_layers=2, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=8,
        image_embed_dim=12, rope_axes_dim=(2, 2, 4), target_size=16, task_type="t2v"), _hunyuan_video15,
        keep_fp32=CAST_ALL),
    TinyModel("HunyuanVideoFramepackTransformer3DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
        num_single_layers=2, num_refiner_layers=2, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None,
        has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True), _framepack),
    TinyModel("HunyuanVideoTransformer3DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
        num_single_layers=2, num_refiner_layers=2, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None),
        _hunyuan_video),
    TinyModel("Ideogram4Transformer2DModel", dict(
        in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4, intermediate_size=32,
        adaln_dim=16, llm_features_dim=24, rope_theta=10_000, mrope_section=(2, 1, 1)), _ideogram4,
        keep_fp32=CAST_ALL),
    TinyModel("JoyImageEditTransformer3DModel", dict(
        patch_size=[1, 2, 2], in_channels=16, hidden_size=32, num_attention_heads=2, text_dim=16, num_layers=2,
        rope_dim_list=[4, 6, 6], theta=256), _joyimage),
    TinyModel("Kandinsky5Transformer3DModel", dict(
        in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=64, num_text_blocks=2, num_visual_blocks=2, axes_dims=(4, 6, 6)), _kandinsky5),
    TinyModel("Kandinsky6SRTransformer3DModel", dict(
        in_visual_dim=4, out_visual_dim=4, time_dim=16, model_dim=32, ff_dim=64, num_visual_blocks=2,
        axes_dims=(4, 6, 6)), _kandinsky6_sr,
        note="8 x 16 token grid: NABLA attention needs the grid divisible by its 8 x 8 tiles"),
    TinyModel("Kandinsky6Transformer3DModel", dict(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, model_dim=32, ff_dim=64,
        num_text_blocks=2, num_visual_blocks=2, axes_dims=(4, 6, 6), visual_cond=False, in_audio_dim=4,
        out_audio_dim=4), _kandinsky6),
    TinyModel("Krea2Transformer2DModel", dict(
        in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=32, timestep_embed_dim=8, text_hidden_dim=16, num_text_layers=3,
        text_num_attention_heads=2, text_num_key_value_heads=1, text_intermediate_size=16,
        num_layerwise_text_blocks=2, num_refiner_text_blocks=2, axes_dims_rope=(4, 2, 2)), _krea2),
    TinyModel("LTX2VideoTransformer3DModel", dict(
        in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2, qk_norm="rms_norm_across_heads",
        caption_channels=16, rope_double_precision=False), _ltx2),
    TinyModel("LTXVideoTransformer3DModel", dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        num_layers=2, qk_norm="rms_norm_across_heads", caption_channels=16), _ltx),
    TinyModel("LatteTransformer3DModel", dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, sample_size=16, patch_size=2, caption_channels=16, norm_type="ada_norm_single",
        num_embeds_ada_norm=1000, video_length=FRAMES), _latte),
    TinyModel("LongCatImageTransformer2DModel", dict(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]),
        _flux_like(4, 32, guidance=True)),
    TinyModel("Lumina2Transformer2DModel", dict(
        sample_size=16, patch_size=2, in_channels=4, hidden_size=24, num_layers=2, num_refiner_layers=2,
        num_attention_heads=3, num_kv_heads=1, multiple_of=2, norm_eps=1e-5, axes_dim_rope=(4, 2, 2),
        axes_lens=(128, 128, 128), cap_feat_dim=32), _lumina2),
    TinyModel("LuminaNextDiT2DModel", dict(
        sample_size=16, patch_size=2, in_channels=4, hidden_size=24, num_layers=2, num_attention_heads=3,
        num_kv_heads=1, multiple_of=16, learn_sigma=False, qk_norm=True, cross_attention_dim=32), _lumina_next),
    TinyModel("MiniMaxH3Transformer3DModel", dict(
        num_attention_heads=2, attention_head_dim=16, hidden_size=24, num_layers=2, num_refiner_layers=2,
        ffn_dim=32, in_channels=4, audio_in_channels=6, patch_size=(1, 2, 2), text_dim=8, freq_dim=8,
        time_embed_hidden_dim=24, time_embed_dim=16, rope_freq_dim=2), _minimax_h3),
    TinyModel("MochiTransformer3DModel", dict(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16,
        in_channels=4, qk_norm="rms_norm", text_embed_dim=16, time_embed_dim=4, activation_fn="swiglu",
        max_sequence_length=16), _mochi),
    TinyModel("MotifVideoTransformer3DModel", dict(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2,
        num_single_layers=4, num_decoder_layers=2, mlp_ratio=2.0, patch_size=1, patch_size_t=1, qk_norm="rms_norm",
        norm_type="layer_norm", text_embed_dim=32, image_embed_dim=4, rope_theta=256.0, rope_axes_dim=(4, 4, 4)),
        _motif),
    TinyModel("NucleusMoEImageTransformer2DModel", dict(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=4,
        joint_attention_dim=16, axes_dims_rope=(8, 4, 4), moe_enabled=False, capacity_factors=[8.0, 8.0]),
        _nucleus, note="moe_enabled=False (dense blocks)"),
    TinyModel("OmniGenTransformer2DModel", dict(
        hidden_size=16, num_attention_heads=4, num_key_value_heads=4, intermediate_size=32, num_layers=2,
        pad_token_id=0, vocab_size=1000, in_channels=4, time_step_dim=4,
        rope_scaling={"long_factor": list(range(1, 3)), "short_factor": list(range(1, 3))}), _omnigen,
        note="text-to-image: no input image latents"),
    TinyModel("OvisImageTransformer2DModel", dict(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 4, 8)), _flux_like(4, 32)),
    TinyModel("PRXTransformer2DModel", dict(
        in_channels=16, patch_size=2, context_in_dim=16, hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=2,
        axes_dim=[8, 8]), _prx),
    TinyModel("PixArtTransformer2DModel", dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, sample_size=2 * GRID_W, patch_size=2, caption_channels=16,
        norm_type="ada_norm_single", use_additional_conditions=False), _pixart),
    TinyModel("QwenImage21Transformer2DModel", dict(
        patch_size=1, in_channels=8, out_channels=8, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        context_in_dim=16, mlp_ratio=2, axes_dims_rope=(4, 6, 6)), _qwen21),
    TinyModel("QwenImageTransformer2DModel", dict(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=4,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4)), _qwen),
    TinyModel("SD3Transformer2DModel", dict(
        sample_size=2 * GRID_W, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16,
        out_channels=4, pos_embed_max_size=2 * GRID_W), _sd3),
    TinyModel("SanaTransformer2DModel", dict(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=2,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
        sample_size=16), _sana),
    TinyModel("SanaVideoTransformer3DModel", dict(
        in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=12, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=24, caption_channels=16,
        mlp_ratio=2.5, sample_size=8, patch_size=(1, 2, 2), qk_norm="rms_norm_across_heads", rope_max_seq_len=32),
        _sana_video),
    TinyModel("SkyReelsV2Transformer3DModel", dict(_WAN), _wan_like(4, 16)),
    TinyModel("WanAnimateTransformer3DModel", dict(
        _WAN, in_channels=12, latent_channels=4, image_dim=None, motion_encoder_channel_sizes={"16": 4, "8": 4, "4": 4},
        motion_encoder_size=16, motion_style_dim=8, motion_dim=4, motion_encoder_dim=8, face_encoder_hidden_dim=8,
        face_encoder_num_heads=2, inject_face_latents_blocks=1), _wan_animate),
    TinyModel("WanTransformer3DModel", dict(_WAN), _wan_like(4, 16)),
    TinyModel("WanVACETransformer3DModel", dict(
        _WAN, num_layers=4, vace_layers=[0, 2], vace_in_channels=12),
        _wan_like(4, 16, control_hidden_states=lambda b: _video(b, 12))),
    TinyModel("ZImageTransformer2DModel", dict(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=16, n_layers=2, n_refiner_layers=2,
        n_heads=1, n_kv_heads=2, qk_norm=True, cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0,
        axes_dims=[8, 4, 4], axes_lens=[256, 32, 32]), _z_image),
]

TINY = {m.cls: m for m in TINY_MODELS}
