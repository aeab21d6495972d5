"""Shard writers: where one shard's images and metadata go, committed in a fixed order.

Every format follows the same protocol: data objects first, the shard's metadata
Parquet next, ``SSSSS_stats.json`` (the commit marker) last. Names are
deterministic, so a retried shard overwrites its earlier attempt.
"""

from __future__ import annotations

import hashlib
import io

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import OutputFolder


def marker_name(shard_name: str) -> str:
    return f"{shard_name}_stats.json"


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


class FilesShardWriter:
    """``files`` format (img2dataset's layout): ``SSSSS/KEY.ext``, ``SSSSS.parquet``, marker."""

    def __init__(self, folder: OutputFolder, shard_name: str, extension: str):
        self.folder, self.shard_name, self.extension = folder, shard_name, extension

    def image_name(self, key: str) -> str:
        return f"{self.shard_name}/{key}.{self.extension}"

    def put_image(self, key: str, data: bytes) -> str:
        """Store one image (thread-safe); returns its name relative to the output."""
        name = self.image_name(key)
        self.folder.write_bytes(name, data)
        return name

    def commit(self, table: pa.Table, stats: dict) -> dict:
        """Write the metadata, then the marker; returns the marker's content."""
        data = parquet_bytes(table)
        name = f"{self.shard_name}.parquet"
        self.folder.write_bytes(name, data)
        stats = {**stats, "objects": {name: hashlib.sha256(data).hexdigest()}}
        self.folder.write_json(marker_name(self.shard_name), stats)
        return stats


def make_writer(output_format: str, folder: OutputFolder, shard_name: str, extension: str):
    """The writer for ``output.format``."""
    if output_format == "files":
        return FilesShardWriter(folder, shard_name, extension)
    raise ValueError(f"output.format {output_format!r} is not implemented yet; use 'files'")
