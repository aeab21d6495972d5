"""Image-caption Parquet datasets from any fsspec URL, decoded once into memory."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class CaptionedImages:
    """Decoded training data: images (N, 3, S, S) in [-1, 1], caption index per image."""

    images: torch.Tensor
    caption_ids: torch.Tensor  # (N,) index into ``captions``
    captions: list[str]  # unique captions, in first-seen order
    latents: torch.Tensor | None = None  # (N, z_dim): the noise that reproduces each image
    boxes: torch.Tensor | None = None  # (N, 4K): K regions per image, x0 y0 x1 y1 in [0, 1]

    def __len__(self) -> int:
        return len(self.caption_ids)


def parquet_files(url: str, storage_options: dict | None = None) -> list[str]:
    """A Parquet file, every ``*.parquet`` under a folder, or a glob, as fsspec URLs."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    if fs.isdir(path):
        paths = sorted(fs.glob(path.rstrip("/") + "/**/*.parquet"))
    elif any(ch in path for ch in "*?["):
        paths = sorted(fs.glob(path))
    else:
        paths = [path]
    if not paths:
        raise FileNotFoundError(f"no Parquet files at {url}")
    return [fs.unstrip_protocol(p) for p in paths]


def read_table(url: str, columns: list[str], storage_options: dict | None = None):
    """The named columns of every Parquet file at ``url``, concatenated."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for file_url in parquet_files(url, storage_options):
        with fsspec.open(file_url, "rb", **(storage_options or {})) as f:
            table = pq.read_table(f)
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise ValueError(f"{file_url} has no column(s) {missing}; it has "
                             f"{table.column_names} (set data.image_column/caption_column)")
        tables.append(table.select(columns))
    return pa.concat_tables(tables)


def decode_image(data: bytes, size: int) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (size, size, 3), resized if needed."""
    from PIL import Image

    if isinstance(data, dict):  # Hugging Face ``Image`` feature: {"bytes": ..., "path": ...}
        data = data["bytes"]

    image = Image.open(io.BytesIO(data)).convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image)


def load_captioned_images(url: str, image_size: int, image_column: str = "image",
                          caption_column: str = "caption",
                          storage_options: dict | None = None,
                          latent_column: str | None = None,
                          box_column: str | None = None) -> CaptionedImages:
    """Read and decode a whole image-caption dataset (fine for tens of thousands of rows)."""
    extra = [c for c in (latent_column, box_column) if c]
    columns = [image_column, caption_column] + extra
    table = read_table(url, columns, storage_options)
    captions = table.column(caption_column).to_pylist()
    unique = list(dict.fromkeys(captions))
    index = {c: i for i, c in enumerate(unique)}
    pixels = np.stack([decode_image(b, image_size)
                       for b in table.column(image_column).to_pylist()])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    latents, boxes = (None if not column else
                      torch.tensor(table.column(column).to_pylist(), dtype=torch.float32)
                      for column in (latent_column, box_column))
    return CaptionedImages(images, torch.tensor([index[c] for c in captions]), unique, latents,
                           boxes)
