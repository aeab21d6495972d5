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
