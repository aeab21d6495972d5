"""Stage 3, generate: embeddings and seeds to pixels, one batch at a time.

A batch that raises is retried sample by sample, so one poison prompt fails alone; a
blank image fails its sample. Batch invariance is the model's job (on CPU each family
draws image by image); the text stage's part is encoding every prompt alone.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from models.base import GenerationParams, ImageModel
from pipeline.output.formats.base import BLANK_IMAGE, GENERATION_FAILED
from pipeline.spec import JobSpec
from pipeline.stages.image import blank_mask
from pipeline.stages.samples import Sample

log = logging.getLogger("synthset")


def generation_params(spec: JobSpec, model: ImageModel) -> GenerationParams:
    """The job's generation section, with the model's native size filling the gaps."""
    g = spec.generation
    width, height = model.native_size or (512, 512)
    params = GenerationParams(width=g.width or width, height=g.height or height, steps=g.steps,
                              guidance_scale=g.guidance_scale, extra=dict(spec.model.options))
    model.check_params(params)
    return params


class Generator:
    """The stage: draws a batch with the loaded model; ``None`` marks a failed sample."""

    def __init__(self, model: ImageModel, params: GenerationParams,
                 embed: Callable[[list[Sample], Counter], object]):
        self.model, self.params, self.embed = model, params, embed

    def __call__(self, batch: list[Sample], timings: Counter,
                 embedded: Future | None = None) -> list[np.ndarray | None]:
        """Images for ``batch``; a failing batch is retried sample by sample."""
        try:
            embeds = embedded.result() if embedded else self.embed(batch, timings)
            return self._draw(batch, embeds, timings)
        except Exception as e:
            if len(batch) == 1:
                batch[0].fail(f"{GENERATION_FAILED}: {type(e).__name__}: {e}"[:500])
                return [None]
            log.warning("batch of %d failed (%s); isolating samples", len(batch), e)
            return [img for s in batch for img in self([s], timings)]

    def _draw(self, batch: list[Sample], embeds, timings: Counter) -> list[np.ndarray | None]:
        for s, truncated in zip(batch, embeds.truncated):
            s.truncated = bool(truncated)
        t = time.perf_counter()
        images = self.model.generate(embeds, [s.seed for s in batch], self.params)
        if not isinstance(images, np.ndarray):
            images = list(images)
        if len(images) != len(batch):
            raise ValueError(f"the model returned {len(images)} images for {len(batch)} seeds")
        timings["generate"] += time.perf_counter() - t
        out: list[np.ndarray | None] = []
        for s, pixels, blank in zip(batch, images, blank_mask(images)):
            if blank:
                s.fail(BLANK_IMAGE)
                out.append(None)
            else:
                out.append(pixels)
        return out
