"""A team's own generator, as docs/custom-models.md shows it: no synthset code but the
ImageModel interface. The colour comes from the prompt, the stripes from the seed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from models.base import GenerationParams, ImageModel, PromptEmbeds


@dataclass
class ToyEmbeds(PromptEmbeds):
    colours: list[tuple[int, int, int]]
    truncated: list[bool]

    def select(self, indices):
        return ToyEmbeds([self.colours[i] for i in indices], [self.truncated[i] for i in indices])

    @classmethod
    def concat(cls, parts):
        return cls([c for p in parts for c in p.colours], [t for p in parts for t in p.truncated])


class ToyModel(ImageModel):
    native_size = (32, 32)

    def __init__(self, stripes: int):
        self.stripes = stripes
        self.model_id = f"toy-{stripes}"

    def encode_prompt(self, prompts, negative_prompts=None):
        colours = [tuple(hashlib.sha256(p.encode()).digest()[:3]) for p in prompts]
        return ToyEmbeds(colours, [False] * len(prompts))

    def generate(self, embeds, seeds, params: GenerationParams):
        out = np.zeros((len(seeds), params.height, params.width, 3), np.uint8)
        for i, (colour, seed) in enumerate(zip(embeds.colours, seeds)):
            out[i] = colour
            out[i, (seed % self.stripes)::self.stripes, :, :] = 255 - np.array(colour, np.uint8)
        return out


def make_model(path, device, dtype, options) -> ToyModel:
    """The factory named by ``model.factory: "tests.models.toy_generator:make_model"``."""
    return ToyModel(int(options.get("stripes", 4)))
