"""Thumbnails for the report: what the page and the contact sheet both show."""

from __future__ import annotations

import io

from PIL import Image

THUMB = 128  # px: thumbnails are shown at their natural size, never scaled by the browser


def thumbnail(data: bytes) -> Image.Image:
    """An RGB thumbnail at most THUMB px a side; small images are enlarged pixel-exact."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    scale = THUMB / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    small = max(img.size) < THUMB
    return img.resize(size, Image.Resampling.NEAREST if small else Image.Resampling.LANCZOS)


def png_bytes(img: Image.Image) -> bytes:
    """``img`` encoded as PNG."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
