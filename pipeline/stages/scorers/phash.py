"""``phash``: a 64-bit perceptual hash (``imagehash.phash``) as 16 hex characters.

Near-duplicate groups (``pipeline/output/dedup.py``) compare these by Hamming distance.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.stages.scorers.base import Scorer


def phash_hex(pixels: np.ndarray) -> str:
    """The perceptual hash of a uint8 (H, W, 3) image: 16 hex characters (64 bits)."""
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(pixels)))


class PhashScorer(Scorer):
    """Cheap: on the store threads."""

    name = "phash"
    columns = {"phash": pa.string()}

    def score(self, pixels: np.ndarray, prompt: str) -> dict:
        return {"phash": phash_hex(pixels)}
