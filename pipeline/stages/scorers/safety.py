"""``safety``: diffusers' ``StableDiffusionSafetyChecker`` as a flag and a score.

The checker compares each image's CLIP embedding with its concept embeddings. diffusers
blacks out flagged images; here nothing is changed: ``nsfw`` is the checker's own verdict
(its ``forward`` on a throwaway copy) and ``nsfw_score`` the largest concept score (cosine
minus the concept's threshold, plus the special-care adjustment: > 0 means flagged), so
users filter or review instead of losing images (diffusers #845).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.stages.scorers.base import Scorer


class SafetyScorer(Scorer):
    """A model scorer: the checker and its CLIP image processor from ``quality.safety_model``."""

    name = "safety"
    columns = {"nsfw": pa.bool_(), "nsfw_score": pa.float32()}
    batched = True

    def __init__(self, quality, device: str = "cpu"):
        super().__init__(quality, device)
        from diffusers.pipelines.stable_diffusion.safety_checker import (
            StableDiffusionSafetyChecker,
        )
        from transformers import CLIPImageProcessor

        path = quality.safety_model
        self.checker = StableDiffusionSafetyChecker.from_pretrained(path).to(device).eval()
        self.processor = CLIPImageProcessor.from_pretrained(path)

    def score_batch(self, images: list[np.ndarray], prompts: list[str]) -> list[dict]:
        import torch

        clip_input = self.processor(images=list(images), return_tensors="pt").pixel_values
        clip_input = clip_input.to(self.device, self.checker.dtype)
        with torch.no_grad():
            _, flagged = self.checker(clip_input=clip_input,
                                      images=np.zeros((len(images), 1, 1, 3)))  # a decoy
            scores = concept_scores(self.checker, clip_input)
        return [{"nsfw": bool(f), "nsfw_score": float(s)} for f, s in zip(flagged, scores)]


def concept_scores(checker, clip_input):
    """The largest concept score per image, as ``forward_onnx`` computes it: (B,)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance

    embeds = checker.visual_projection(checker.vision_model(clip_input)[1])
    special = cosine_distance(embeds, checker.special_care_embeds) \
        - checker.special_care_embeds_weights
    adjustment = (special > 0).any(dim=1).float()[:, None] * 0.01
    concept = cosine_distance(embeds, checker.concept_embeds) - checker.concept_embeds_weights
    return (concept + adjustment).max(dim=1).values.float().cpu().tolist()
