"""A tiny seeded CLIP (text and vision towers) built from configs and saved with
``save_pretrained``, so the clip scorer loads it the way it loads a hub model: offline."""

from __future__ import annotations

import os

import torch

from models.tiny_sd import build_byte_clip_tokenizer


def build_tiny_clip(folder: str) -> str:
    """Write model, tokenizer and image processor to ``folder``; returns it."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    tokenizer = build_byte_clip_tokenizer(os.path.join(folder, "tok-src"))
    text = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, vocab_size=len(tokenizer), hidden_size=32,
        intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=tokenizer.model_max_length)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                              num_attention_heads=4, num_hidden_layers=2)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                 projection_dim=16)).eval()
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_tiny_safety_checker(folder: str, threshold: float) -> str:
    """A tiny seeded ``StableDiffusionSafetyChecker`` whose concepts all have ``threshold``
    (cosines lie in [-1, 1]: -2 flags every image, 2 none), and its image processor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPVisionConfig

    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                              num_attention_heads=4, num_hidden_layers=2)
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(CLIPConfig(vision_config=vision.to_dict(),
                                                      projection_dim=16)).eval()
    with torch.no_grad():
        checker.concept_embeds.normal_()
        checker.special_care_embeds.normal_()
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(2.0)  # no special care: no adjustment
    checker.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
