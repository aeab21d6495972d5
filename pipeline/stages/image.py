"""Encoding uint8 arrays into image file bytes, and the file extension for each format."""

from __future__ import annotations

import io

import numpy as np
import simplejpeg
from PIL import Image

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def encode_image(pixels: np.ndarray, image_format: str, quality: int = 95) -> bytes:
    """(H, W, 3) uint8 to PNG/JPEG/WebP bytes; deterministic for a given input.

    JPEG goes through simplejpeg (libjpeg-turbo, 4:2:0 like Pillow's default): it releases
    the GIL, so the encode pool's threads run in parallel, where Pillow's JPEG encoder
    into memory holds it (measured: 2 threads no faster than 1). PNG and WebP release it
    in Pillow already.
    """
    if image_format == "jpeg" and pixels.ndim == 3 and pixels.shape[2] == 3:
        return simplejpeg.encode_jpeg(np.ascontiguousarray(pixels), quality=quality,
                                      colorspace="RGB", colorsubsampling="420")
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


def blank_mask(images) -> list[bool]:
    """:func:`is_blank` for each image of a batch; one reduction for a stacked array."""
    if isinstance(images, np.ndarray) and images.ndim == 4 and len(images):
        flat = images.reshape(len(images), -1)
        # a sparse sample settles almost every image; only flat-looking ones get a full pass
        sample = flat[:, ::61]
        maybe = np.flatnonzero(sample.max(axis=1) == sample.min(axis=1))
        blank = np.zeros(len(images), bool)
        blank[maybe] = flat[maybe].max(axis=1) == flat[maybe].min(axis=1)
        return blank.tolist()
    return [is_blank(im) for im in images]


def is_blank(pixels: np.ndarray) -> bool:
    """A single flat colour: almost always a failed generation (NaN latents, black frames)."""
    return bool(pixels.size) and int(pixels.max()) == int(pixels.min())
