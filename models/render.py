"""Pictures that compress like a diffusion model's output, cheaply, for the null family.

A real 512² render is smooth regions and soft shapes covered in fine texture: PNG keeps
most of that texture (DiffusionDB's Stable Diffusion PNGs average ~580 KB), JPEG far less.
Flat blocks compress 20× better and white noise much worse; neither costs an encoder
what a render does. A few such pictures are painted once per size (a bank); each seed
then gets one of them shifted by a seeded offset, a copy costing well under a millisecond,
so a simulated device spends its time sleeping, not painting.
"""

from __future__ import annotations

import numpy as np

BANK_BYTES = 32 * 2**20  # at most this much painted per size (2 pictures at 2048²)
TEXTURE = 8.0  # σ of the 4-pixel texture (grey levels)
GRAIN = 3.0  # σ of the per-pixel grain


class RenderBank:
    """Painted pictures of one size; :meth:`draw` gives each seed a shifted copy."""

    def __init__(self, width: int, height: int, pictures: int = 8):
        self.size = (width, height)
        count = max(2, min(pictures, BANK_BYTES // (width * height * 3)))
        self.pictures = [paint(i, width, height) for i in range(count)]

    def draw(self, seeds: list[int]) -> np.ndarray:
        """(B, H, W, 3) uint8: picture ``seed % n``, rolled by an offset from the seed."""
        width, height = self.size
        out = np.empty((len(seeds), height, width, 3), np.uint8)
        for i, seed in enumerate(seeds):
            mixed = (int(seed) * 0x9E3779B97F4A7C15) % 2**64  # spread nearby seeds apart
            picture = self.pictures[int(seed) % len(self.pictures)]
            roll_into(out[i], picture, (mixed >> 20) % height, (mixed >> 40) % width)
        return out


def roll_into(out: np.ndarray, picture: np.ndarray, dy: int, dx: int) -> None:
    """``out[:] = np.roll(picture, (dy, dx), (0, 1))`` as four block copies, no temporaries."""
    h, w = picture.shape[:2]
    out[dy:, dx:] = picture[:h - dy, :w - dx]
    out[dy:, :dx] = picture[:h - dy, w - dx:]
    out[:dy, dx:] = picture[h - dy:, :w - dx]
    out[:dy, :dx] = picture[h - dy:, w - dx:]


def paint(seed: int, width: int, height: int) -> np.ndarray:
    """One picture: a gradient sky, 4-7 soft ellipses with gradient fills, texture."""
    rng = np.random.default_rng([seed, width, height])
    y, x = (a.astype(np.float32) for a in np.mgrid[0:height, 0:width])
    y, x = y / height, x / width
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * x + np.sin(angle) * y
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = c0 + (c1 - c0) * t[..., None]
    for _ in range(rng.integers(4, 8)):
        cx, cy = rng.uniform(0, 1, 2)
        rx, ry = rng.uniform(0.05, 0.3, 2)
        d = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        edge = 2.0 / (min(width, height) * min(rx, ry))  # about 2 px of anti-aliasing
        mask = np.clip((1 - d) / edge, 0, 1)[..., None]
        ca, cb = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = img * (1 - mask) + (ca + (cb - ca) * y[..., None]) * mask
    texture = rng.normal(0, TEXTURE, (height // 4 + 1, width // 4 + 1, 3)).astype(np.float32)
    img += texture.repeat(4, 0).repeat(4, 1)[:height, :width]
    img += rng.normal(0, GRAIN, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)
