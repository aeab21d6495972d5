"""A generator that costs (almost) nothing: measures the pipeline's own overhead.

``model.family: "null"`` skips the text encoder and draws seeded noise images, so a
benchmark or scale test sees only reading, sharding, image encoding, uploads and
metadata. Deterministic per seed like every other family.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.base import GenerationParams, ImageModel, PromptEmbeds


@dataclass
class NullEmbeds(PromptEmbeds):
    """Just the prompt lengths: enough to keep the interface honest."""

    lengths: list[int]
    truncated: list[bool]

    def select(self, indices: list[int]) -> NullEmbeds:
        return NullEmbeds([self.lengths[i] for i in indices], [False] * len(indices))

    @classmethod
    def concat(cls, parts: list[NullEmbeds]) -> NullEmbeds:
        return cls([n for p in parts for n in p.lengths], [t for p in parts for t in p.truncated])


class NullImageModel(ImageModel):
    """Seeded noise at any size; no weights, no encoder."""

    model_id = "null"

    def encode_prompt(self, prompts, negative_prompts=None) -> NullEmbeds:
        return NullEmbeds([len(p) for p in prompts], [False] * len(prompts))

    def generate(self, embeds: NullEmbeds, seeds: list[int],
                 params: GenerationParams) -> np.ndarray:
        # 8x8 blocks of noise scaled up: cheap, never blank, and it compresses like a picture
        small = np.stack([np.random.default_rng(s).integers(0, 256, (8, 8, 3), dtype=np.uint8)
                          for s in seeds])
        reps = (1, -(-params.height // 8), -(-params.width // 8), 1)
        return np.ascontiguousarray(
            np.kron(small, np.ones(reps[1:3] + (1,), np.uint8))[:, :params.height, :params.width])
