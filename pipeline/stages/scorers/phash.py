"""``phash``: a 64-bit perceptual hash (``imagehash.phash``) as 16 hex characters, and the
two signatures near-duplicate groups are found with.

``pipeline/output/dedup.py`` groups images whose ``ahash`` (``imagehash.average_hash``: an
8x8 grey thumbnail above or below its mean) lies within ``quality.dedup_threshold`` bits,
confirmed by ``colour_2x2`` (the mean colour of each quarter, 5 bits per channel). Measured
on 64-px scenes (docs/quality.md): pHash moves 8-32 bits when an image shifts by one
pixel and sees grey levels only, so it grouped a white circle on orange with a white square
on yellow; the average hash moves at most a few bits, and the colour check separates
scenes that differ in colour only.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.stages.scorers.base import Scorer

COLOUR_BITS = 5  # per channel of each quarter: 4 quarters x 3 channels x 5 bits = 60 bits
COLOUR_STEPS = 1  # quarters' channels may differ this many steps (of 8 levels) in a group


def phash_hex(pixels: np.ndarray) -> str:
    """The perceptual hash of a uint8 (H, W, 3) image: 16 hex characters (64 bits)."""
    return signatures(pixels)["phash"]


def near_signatures(pixels: np.ndarray) -> dict:
    """``ahash`` and ``colour_2x2`` of a uint8 (H, W, 3) image, 16 hex characters each."""
    found = signatures(pixels)
    return {"ahash": found["ahash"], "colour_2x2": found["colour_2x2"]}


def signatures(pixels: np.ndarray) -> dict:
    """``phash``, ``ahash`` and ``colour_2x2`` of a uint8 (H, W, 3) image; the grey image is
    made once for both hashes (each would convert it again)."""
    import imagehash
    from PIL import Image

    image = Image.fromarray(pixels)
    grey = image.convert("L")
    quarters = np.asarray(image.resize((2, 2), Image.Resampling.BOX), np.uint64)  # (2, 2, 3)
    fields = quarters.reshape(-1) >> np.uint64(8 - COLOUR_BITS)  # 12 values of 5 bits
    packed = sum(int(v) << (COLOUR_BITS * i) for i, v in enumerate(fields))
    return {"phash": str(imagehash.phash(grey)), "ahash": str(imagehash.average_hash(grey)),
            "colour_2x2": f"{packed:016x}"}


def colours_close(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether packed ``colour_2x2`` values (uint64 arrays) agree within COLOUR_STEPS on
    every channel of every quarter."""
    mask = np.uint64((1 << COLOUR_BITS) - 1)
    close = np.ones(len(a), bool)
    for i in range(12):
        shift = np.uint64(COLOUR_BITS * i)
        fa = ((a >> shift) & mask).astype(np.int16)
        fb = ((b >> shift) & mask).astype(np.int16)
        close &= np.abs(fa - fb) <= COLOUR_STEPS
    return close


class PhashScorer(Scorer):
    """Cheap: on the store threads."""

    name = "phash"
    columns = {"phash": pa.string(), "ahash": pa.string(), "colour_2x2": pa.string()}

    def score(self, pixels: np.ndarray, prompt: str) -> dict:
        return signatures(pixels)
