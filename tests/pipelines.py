"""Tiny diffusers pipelines from random modules, driven with prompt embeddings (no tokenizer)."""
import copy

import diffusers as D
import torch

import jano_compile


def tiny_vae(latent_channels):
    return D.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                           down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                           up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                           block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                           shift_factor=0.0, scaling_factor=1.0).eval()


def flux_pipeline():
    transformer = D.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2,
                                           joint_attention_dim=32, pooled_projection_dim=32,
                                           axes_dims_rope=(4, 6, 6)).eval()
    pipe = D.FluxPipeline(scheduler=D.FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(4), text_encoder=None,
                          tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    inputs = dict(prompt_embeds=torch.randn(1, 6, 32), pooled_prompt_embeds=torch.randn(1, 32),
                  height=32, width=32, output_type="pt")
    return pipe, inputs


def sd3_pipeline():
    transformer = D.SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=1,
                                          attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                          caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
                                          pos_embed_max_size=16).eval()
    pipe = D.StableDiffusion3Pipeline(scheduler=D.FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(4),
                                      text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                      text_encoder_3=None, tokenizer_3=None, transformer=transformer)
    inputs = dict(prompt_embeds=torch.randn(1, 5, 16), pooled_prompt_embeds=torch.randn(1, 16),
                  negative_prompt_embeds=torch.randn(1, 5, 16), negative_pooled_prompt_embeds=torch.randn(1, 16),
                  height=32, width=32, output_type="pt", guidance_scale=2.0)
    return pipe, inputs


PIPELINES = {"flux": flux_pipeline, "sd3": sd3_pipeline}


def wan_pipeline():
    transformer = D.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                          in_channels=16, out_channels=16, text_dim=16, freq_dim=16, ffn_dim=32,
                                          num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                          rope_max_seq_len=32).eval()
    vae = D.AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             temperal_downsample=[False, True, True]).eval()
    pipe = D.WanPipeline(tokenizer=None, text_encoder=None, vae=vae,
                         scheduler=D.FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer)
    inputs = dict(prompt_embeds=torch.randn(1, 5, 16), negative_prompt_embeds=torch.randn(1, 5, 16),
                  height=32, width=32, num_frames=5, guidance_scale=2.0, output_type="pt")
    return pipe, inputs


def wan22_pipeline(boundary_ratio=0.75):
    """Wan 2.2 A14B's layout: `transformer` for timesteps >= boundary_ratio * 1000, a second
    expert (other weights) `transformer_2` below."""
    pipe, inputs = wan_pipeline()
    second = copy.deepcopy(pipe.transformer)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in second.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    pipe = D.WanPipeline(tokenizer=None, text_encoder=None, vae=pipe.vae, scheduler=pipe.scheduler,
                         transformer=pipe.transformer, transformer_2=second, boundary_ratio=boundary_ratio)
    return pipe, inputs


def pixart_pipeline():
    transformer = D.PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                             out_channels=8, num_layers=1, cross_attention_dim=16, sample_size=8,
                                             patch_size=2, caption_channels=16, norm_type="ada_norm_single",
                                             use_additional_conditions=False).eval()
    pipe = D.PixArtSigmaPipeline(tokenizer=None, text_encoder=None, vae=tiny_vae(4),
                                 # clip_sample=False: random weights put x0 far outside [-1, 1], where
                                 # clipping turns small output differences into large ones
                                 transformer=transformer, scheduler=D.DDIMScheduler(clip_sample=False))
    inputs = dict(prompt_embeds=torch.randn(1, 6, 16), prompt_attention_mask=torch.ones(1, 6, dtype=torch.long),
                  negative_prompt_embeds=torch.randn(1, 6, 16),
                  negative_prompt_attention_mask=torch.ones(1, 6, dtype=torch.long),
                  negative_prompt=None, height=16, width=16, guidance_scale=2.0, output_type="pt",
                  use_resolution_binning=False)
    return pipe, inputs


def cogvideox_pipeline():
    transformer = D.CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                                out_channels=4, time_embed_dim=4, text_embed_dim=16, num_layers=1,
                                                sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
                                                temporal_compression_ratio=4, max_text_seq_length=6).eval()
    vae = D.AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
                                   up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                   latent_channels=4, layers_per_block=1, norm_num_groups=2,
                                   temporal_compression_ratio=4).eval()
    pipe = D.CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                               scheduler=D.CogVideoXDDIMScheduler())
    inputs = dict(prompt_embeds=torch.randn(1, 6, 16), negative_prompt_embeds=torch.randn(1, 6, 16),
                  height=32, width=32, num_frames=9, guidance_scale=2.0, output_type="pt")
    return pipe, inputs


PIPELINES.update(wan=wan_pipeline, pixart=pixart_pipeline, cogvideox=cogvideox_pipeline)


def eager_and_jano(pipe, inputs, steps, experts=("transformer",)):
    """`pipe`'s output at `steps` steps (generator seed 0) eager, under jano (eager lowering,
    default recipe), and eager again after disable(); and the stats of each of `experts`
    (the pipeline's attributes) for the jano run. A modular pipeline's `inputs` name the
    output (`output="images"`), which it returns as it is."""
    def generate():
        result = pipe(**inputs, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
        if isinstance(result, torch.Tensor):
            return result
        return result.images if hasattr(result, "images") else result.frames
    with torch.no_grad():
        eager = generate()
        jano_compile.enable(pipe, lowering="eager")
        fast = generate()
        stats = [jano_compile.controller(getattr(pipe, name)).stats() for name in experts]
        jano_compile.disable(pipe)
        again = generate()
    return eager, fast, again, stats


def _modular(blocks, **components):
    """A modular pipeline of `blocks` without its text-encoder block (prompt embeddings are
    given), with `components`."""
    blocks.sub_blocks.pop("text_encoder", None)
    pipe = blocks.init_pipeline()
    pipe.update_components(**components)
    return pipe


def flux_modular_pipeline():
    """FluxModularPipeline (its blocks test `if transformer:`)."""
    transformer = flux_pipeline()[0].transformer
    pipe = _modular(D.FluxAutoBlocks(), transformer=transformer, scheduler=D.FlowMatchEulerDiscreteScheduler(),
                    vae=tiny_vae(4))
    inputs = dict(prompt_embeds=torch.randn(1, 6, 32), pooled_prompt_embeds=torch.randn(1, 32),
                  height=32, width=32, output_type="pt", output="images")
    return pipe, inputs


def qwen_modular_pipeline():
    """QwenImageModularPipeline (its denoiser passes the inputs `transformer.forward` names)."""
    transformer = D.QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                                attention_head_dim=16, num_attention_heads=2,
                                                joint_attention_dim=16, guidance_embeds=False,
                                                axes_dims_rope=(8, 4, 4)).eval()
    vae = D.AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                   temperal_downsample=[False, True], latents_mean=[0.0] * 4,
                                   latents_std=[1.0] * 4).eval()
    pipe = _modular(D.QwenImageAutoBlocks(), transformer=transformer, scheduler=D.FlowMatchEulerDiscreteScheduler(),
                    vae=vae, guider=D.ClassifierFreeGuidance(guidance_scale=2.0))
    mask = torch.ones(1, 6, dtype=torch.long)
    inputs = dict(prompt_embeds=torch.randn(1, 6, 16), prompt_embeds_mask=mask,
                  negative_prompt_embeds=torch.randn(1, 6, 16), negative_prompt_embeds_mask=mask,
                  height=32, width=32, output_type="pt", output="images")
    return pipe, inputs


MODULAR_PIPELINES = {"flux": flux_modular_pipeline, "qwen": qwen_modular_pipeline}
