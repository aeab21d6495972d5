"""A test model that draws scene prompts with the procedural renderer, wrong on purpose for
some seeds: the scene scorer and best-of-n then have something to find and to fix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models import scenes
from models.base import ImageModel, PromptEmbeds
from pipeline.stages.scorers.scene import parse_scene


@dataclass
class TextEmbeds(PromptEmbeds):
    prompts: list[str]
    truncated: list[bool]

    def select(self, indices):
        return TextEmbeds([self.prompts[i] for i in indices], [self.truncated[i] for i in indices])

    @classmethod
    def concat(cls, parts):
        return TextEmbeds([p for e in parts for p in e.prompts],
                          [t for e in parts for t in e.truncated])


class SceneModel(ImageModel):
    """Renders the prompt's scene; a seed with ``seed % wrong_every != 0`` gets the wrong
    colour; scenes of a size in ``still`` are drawn right, without jitter, whatever the seed
    (a collapsed prompt). Any other prompt draws seeded noise."""

    model_id, native_size = "scene-test", (64, 64)

    def __init__(self, wrong_every: int = 3, still: tuple[str, ...] = ()):
        self.wrong_every, self.still = wrong_every, still
        self.seeds_drawn: list[int] = []

    def encode_prompt(self, prompts, negative_prompts=None):
        return TextEmbeds(list(prompts), [False] * len(prompts))

    def generate(self, embeds, seeds, params):
        self.seeds_drawn += list(seeds)
        return np.stack([self._draw(p, s) for p, s in zip(embeds.prompts, seeds)])

    def _draw(self, prompt: str, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        attrs = parse_scene(prompt)
        if attrs is None:
            return rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        if attrs["size"] in self.still:
            return scenes.render(attrs, 64)  # the seed changes nothing: collapsed
        if seed % self.wrong_every:
            others = [c for c in scenes.COLOURS if c not in (attrs["colour"], attrs["background"])]
            attrs = {**attrs, "colour": others[seed % len(others)]}
        return scenes.render(attrs, 64, rng)
