"""A generator that costs (almost) nothing: measures the pipeline's own overhead.

``model.family: "null"`` skips the text encoder and draws seeded noise images, so a
benchmark or scale test sees only reading, sharding, image encoding, uploads and
metadata. Deterministic per seed like every other family.

It can also stand in for an accelerator (``model.options``):

- ``device_ms_per_image``: each batch holds the generating thread for batch × this many
  milliseconds, drawing included, the rest in a sleep (the GIL released, no CPU used), as
  a GPU-bound model does;
- ``images``: ``blocks`` (the default without a device time: 8×8 seeded blocks, which
  compress far better than real pictures) or ``render`` (the default with one: smooth
  gradients and soft shapes with a render's fine texture, so PNG/JPEG/WebP cost and
  weigh about what a diffusion model's output does; see ``models/render.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

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
    """Seeded images at any size; no weights, no encoder; optionally a simulated device."""

    model_id = "null"
    OPTIONS = ("device_ms_per_image", "images")

    def __init__(self, options: dict[str, Any] | None = None):
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ValueError(f"model.options: {unknown} unknown to the null family "
                             f"(it takes {', '.join(self.OPTIONS)})")
        self.device_ms = float(options.get("device_ms_per_image", 0))
        self.images = options.get("images", "render" if self.device_ms else "blocks")
        if self.device_ms < 0 or self.images not in ("blocks", "render"):
            raise ValueError("model.options: device_ms_per_image must be >= 0 and images "
                             "'blocks' or 'render'")
        self._renders = None
        self.cpu_bound = not self.device_ms  # a simulated device sleeps: cores are free

    def warmup(self, params: GenerationParams) -> None:
        if self.images == "render":  # the picture bank is built before timing starts
            self._bank(params.width, params.height)

    def _bank(self, width: int, height: int):
        from models.render import RenderBank

        if self._renders is None or self._renders.size != (width, height):
            self._renders = RenderBank(width, height)
        return self._renders

    def encode_prompt(self, prompts, negative_prompts=None) -> NullEmbeds:
        return NullEmbeds([len(p) for p in prompts], [False] * len(prompts))

    def generate(self, embeds: NullEmbeds, seeds: list[int],
                 params: GenerationParams) -> np.ndarray:
        start = time.perf_counter()
        images = self._draw(seeds, params)
        if self.device_ms:
            # A GPU-bound call lasts its device time, copy-out included: drawing the
            # pictures happens inside that time, not after it (else a fast simulated
            # device runs ~10 ms per batch slower than the rate it was given).
            budget = len(seeds) * self.device_ms / 1000
            time.sleep(max(0.0, budget - (time.perf_counter() - start)))  # no CPU
        return images

    def _draw(self, seeds: list[int], params: GenerationParams) -> np.ndarray:
        if self.images == "render":
            return self._bank(params.width, params.height).draw(seeds)
        # 8x8 blocks of seeded noise scaled up: cheap, never blank, compresses like a picture.
        # The noise is a splitmix64 hash of (seed, position), vectorised over the batch:
        # a Generator per seed cost more than JPEG-encoding the image.
        cells = np.arange(8 * 8 * 3, dtype=np.uint64)
        state = np.asarray(seeds, dtype=np.uint64)[:, None] * np.uint64(192) + cells
        small = (_splitmix64(state) >> np.uint64(56)).astype(np.uint8).reshape(-1, 8, 8, 3)
        ys = np.arange(params.height) * 8 // params.height
        xs = np.arange(params.width) * 8 // params.width
        return small.take(ys, axis=1).take(xs, axis=2)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a well-mixed 64-bit hash of each element."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))
