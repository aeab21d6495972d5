"""Encoding uint8 arrays into image file bytes, and the file extension for each format."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def encode_image(pixels: np.ndarray, image_format: str, quality: int = 95) -> bytes:
    """(H, W, 3) uint8 to PNG/JPEG/WebP bytes; deterministic for a given input."""
    buf = io.BytesIO()
    image = Image.fromarray(pixels, mode="RGB") if pixels.ndim == 3 else Image.fromarray(pixels)
    if image_format == "png":
        image.save(buf, format="PNG")
    elif image_format == "jpeg":
        image.save(buf, format="JPEG", quality=quality)
    elif image_format == "webp":
        image.save(buf, format="WEBP", quality=quality)
    else:
        raise ValueError(f"unsupported image format {image_format!r}")
    return buf.getvalue()


def is_blank(pixels: np.ndarray) -> bool:
    """A single flat colour: almost always a failed generation (NaN latents, black frames)."""
    return bool(pixels.size) and int(pixels.max()) == int(pixels.min())
