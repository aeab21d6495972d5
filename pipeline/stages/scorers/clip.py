"""``clip``: image-text cosine of a CLIP model loaded through ``transformers``.

``clip_score`` is the raw cosine (LAION kept pairs at >= 0.28 with ViT-B/32); torchmetrics'
CLIPScore would be 100 * max(cos, 0). ``clip_model`` names the model, since scores of two
models do not compare.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.stages.scorers.base import EMBEDDING, Scorer


class ClipScorer(Scorer):
    """A model scorer: loaded once per actor, a batch at a time on the actor's device."""

    name = "clip"
    columns = {"clip_score": pa.float32(), "clip_model": pa.string()}
    batched = True

    def __init__(self, quality, device: str = "cpu"):
        super().__init__(quality, device)
        from transformers import CLIPModel, CLIPProcessor

        self.model_id = quality.clip_model
        self.model = CLIPModel.from_pretrained(self.model_id).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(self.model_id)

    def score_batch(self, images: list[np.ndarray], prompts: list[str]) -> list[dict]:
        import torch

        inputs = self.processor(text=list(prompts), images=list(images), return_tensors="pt",
                                padding=True, truncation=True).to(self.device)
        with torch.no_grad():
            image = self.model.get_image_features(pixel_values=inputs["pixel_values"])
            text = self.model.get_text_features(input_ids=inputs["input_ids"],
                                                attention_mask=inputs["attention_mask"])
        image = torch.nn.functional.normalize(_tensor(image).float(), dim=-1)
        text = torch.nn.functional.normalize(_tensor(text).float(), dim=-1)
        cosines = (image * text).sum(-1).cpu().tolist()  # (B,)
        # the unit image embedding rides along (not a column): the Vendi score of a prompt's
        # images is computed from them at commit
        return [{"clip_score": c, "clip_model": self.model_id, EMBEDDING: e}
                for c, e in zip(cosines, image.cpu().numpy())]


def _tensor(features):
    # transformers 5 may return a model output instead of a bare tensor
    return getattr(features, "pooler_output", features)
