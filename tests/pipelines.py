"""Tiny diffusers pipelines from random modules, driven with prompt embeddings (no tokenizer)."""
import diffusers as D
import torch


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
