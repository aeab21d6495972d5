"""The scorer interface: what a quality scorer computes and the typed columns it adds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

EMBEDDING = "_clip_embedding"  # a score key that is no column: a unit image embedding


class Scorer:
    """One quality signal per image, as typed metadata columns.

    A cheap scorer (``batched = False``) scores one image at a time on the store threads,
    beside its encoding; a model scorer (``batched = True``) scores a whole batch on the
    actor's device. Either way the generating thread never waits on a cheap one.
    """

    name: str = ""
    columns: dict[str, pa.DataType] = {}  # column -> Arrow type; None values are nulls
    batched = False

    def __init__(self, quality, device: str = "cpu"):
        self.quality, self.device = quality, device

    def score(self, pixels: np.ndarray, prompt: str) -> dict:
        """Columns of one uint8 (H, W, 3) image drawn for ``prompt``."""
        return self.score_batch([pixels], [prompt])[0]

    def score_batch(self, images: list[np.ndarray], prompts: list[str]) -> list[dict]:
        """Columns of each image of a batch."""
        return [self.score(p, t) for p, t in zip(images, prompts)]
