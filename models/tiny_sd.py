"""A tiny, seeded Stable Diffusion pipeline built offline from configs, for tests.

Mirrors diffusers' fast tests (``tests/pipelines/stable_diffusion/test_stable_diffusion.py:
get_dummy_components``), except that the CLIP tokenizer is written here from a byte-level
vocabulary instead of being downloaded. The pipeline is saved with ``save_pretrained`` so
tests load it back through ``from_pretrained`` exactly as users would.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

CROSS_ATTENTION_DIM = 8
MAX_LENGTH = 77  # CLIP's context window


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes that GPT-2/CLIP byte-level BPE uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def build_byte_clip_tokenizer(folder: str):
    """A CLIPTokenizer over bytes: no merges, so any text (any script) maps to byte tokens."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer(
        os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
        model_max_length=MAX_LENGTH,
    )


def _text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=CROSS_ATTENTION_DIM,
        intermediate_size=16, layer_norm_eps=1e-05, num_attention_heads=2, num_hidden_layers=2,
        vocab_size=len(tokenizer),  # must cover every token id the tokenizer emits
        max_position_embeddings=MAX_LENGTH,
    )
    return CLIPTextModel(config)


def build_tiny_sd_components(tokenizer) -> dict:
    """The UNet, VAE, text encoder and DDIM scheduler of diffusers' SD fast tests, seeded."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM, norm_num_groups=2,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4,
        norm_num_groups=2,
    )
    torch.manual_seed(0)
    text_encoder = _text_encoder(tokenizer)
    # Built from configs they start in train mode; dropout would break determinism.
    for module in (unet, vae, text_encoder):
        module.eval()
    return {"unet": unet, "scheduler": scheduler, "vae": vae, "text_encoder": text_encoder,
            "tokenizer": tokenizer, "safety_checker": None, "feature_extractor": None,
            "image_encoder": None}


def build_tiny_sd_pipeline(path: str) -> str:
    """Save a tiny StableDiffusionPipeline (64x64 images) at ``path``; returns ``path``.

    A folder that already holds a saved pipeline is reused as is.
    """
    from diffusers import StableDiffusionPipeline

    if os.path.exists(os.path.join(path, "model_index.json")):
        return path
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_byte_clip_tokenizer(scratch)
        pipe = StableDiffusionPipeline(
            **build_tiny_sd_components(tokenizer), requires_safety_checker=False
        )
    pipe.save_pretrained(path)
    return path


def build_sd15_sized_pipeline(path: str) -> str:
    """A StableDiffusionPipeline with SD-1.5's published architecture and random weights,
    saved in fp16 at ``path`` (about 2 GB; reused if there): the compute of the real model
    at 512x512, for ``make bench-gpu``, with no download."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    if os.path.exists(os.path.join(path, "model_index.json")):
        return path
    torch.manual_seed(0)
    # UNet2DConditionModel's defaults are SD-1.x's blocks; the text width is CLIP ViT-L's
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        sample_size=512)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = build_byte_clip_tokenizer(scratch)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, hidden_size=768, intermediate_size=3072,
            num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu",
            vocab_size=len(tokenizer), max_position_embeddings=MAX_LENGTH))
        pipe = StableDiffusionPipeline(
            unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(),
            tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
            feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(path)
    return path
