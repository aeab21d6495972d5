"""Tiny seeded SDXL, SD3 and FLUX pipelines built in memory, for tests of the other families.

Configs follow diffusers' fast tests (``get_dummy_components`` in ``tests/pipelines/
stable_diffusion_xl``, ``stable_diffusion_3`` and ``flux``). With no hub, the byte-level CLIP
tokenizer of :mod:`tiny_sd` also stands in for the T5 tokenizer: the pipelines only call it
like any tokenizer, so it exercises the same code paths.
"""

from __future__ import annotations

import tempfile

import torch

from models.tiny_sd import build_byte_clip_tokenizer


def _tokenizer():
    with tempfile.TemporaryDirectory() as scratch:
        return build_byte_clip_tokenizer(scratch)


def _seeded(build):
    torch.manual_seed(0)
    return build().eval()  # built from configs they start in train mode


def _clip(tokenizer, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=5, vocab_size=len(tokenizer), hidden_act="gelu",
        projection_dim=32, max_position_embeddings=tokenizer.model_max_length,
    )
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return _seeded(lambda: model_class(config))


def _t5(tokenizer):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return _seeded(lambda: T5EncoderModel(config))


def _flow_vae(latent_channels: int):
    from diffusers import AutoencoderKL

    return _seeded(lambda: AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    ))


def build_tiny_sdxl():
    """A StableDiffusionXLPipeline; sizes must be multiples of 8."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    unet = _seeded(lambda: UNet2DConditionModel(
        block_out_channels=(2, 4), layers_per_block=2, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    ))
    vae = _seeded(lambda: AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    ))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    tokenizer = _tokenizer()
    return StableDiffusionXLPipeline(
        vae=vae, unet=unet, scheduler=scheduler, tokenizer=tokenizer, tokenizer_2=tokenizer,
        text_encoder=_clip(tokenizer, False), text_encoder_2=_clip(tokenizer, True),
    )


def build_tiny_sd3():
    """A StableDiffusion3Pipeline with 2x2 patches; sizes must be even."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    transformer = _seeded(lambda: SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
        pooled_projection_dim=64, out_channels=4,
    ))
    tokenizer = _tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(4),
        tokenizer=tokenizer, tokenizer_2=tokenizer, tokenizer_3=tokenizer,
        text_encoder=_clip(tokenizer, True), text_encoder_2=_clip(tokenizer, True),
        text_encoder_3=_t5(tokenizer),
    )


def build_tiny_flux():
    """A FluxPipeline; latents are packed 2x2, so sizes must be even."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    transformer = _seeded(lambda: FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    ))
    tokenizer = _tokenizer()
    return FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_flow_vae(1),
        tokenizer=tokenizer, tokenizer_2=tokenizer, text_encoder=_clip(tokenizer, False),
        text_encoder_2=_t5(tokenizer),
    )
