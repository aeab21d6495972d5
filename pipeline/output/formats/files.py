"""``files``: img2dataset's layout, one object per image.

``SSSSS/KEY.ext`` per successful sample, ``SSSSS.parquet`` with every row (failures
included), then the marker. Each image is a PUT: simple to browse, slow to upload at scale.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.output.formats.base import ShardCheck, ShardWriter, parquet_bytes
from pipeline.output.layout import metadata_name
from pipeline.output.storage import OutputFolder


class FilesShardWriter(ShardWriter):
    """``files`` format (img2dataset's layout): ``SSSSS/KEY.ext``, ``SSSSS.parquet``, marker."""

    format = "files"
    description = ("`SSSSS/KEY.ext` per image + `SSSSS.parquet` metadata (img2dataset's "
                   "layout); one PUT per image")

    def image_name(self, key: str) -> str:
        return f"{self.shard_name}/{key}.{self.extension}"

    def put_image(self, key: str, data: bytes) -> str:
        """Store one image (thread-safe); returns its name relative to the output."""
        name = self.image_name(key)
        if self.committed is None:
            # Per-image checksums live in the metadata rows, not the marker.
            self.upload(name, data, checksum=False)
        return name

    def write_objects(self, table: pa.Table) -> None:
        self.upload(metadata_name(self.shard_name), parquet_bytes(table))

    @classmethod
    def look_at(cls, output: str, shard_name: str) -> str:
        return f"{output}/{shard_name}/ (images), {output}/{metadata_name(shard_name)} (metadata)"

    @classmethod
    def stored_images(cls, folder: OutputFolder, shard_name: str, rows: list[dict]):
        for r in rows:
            if r["file"]:
                yield r["key"], folder.read_bytes(r["file"])

    @classmethod
    def check(cls, c: ShardCheck, images: dict[str, dict]) -> set[str]:
        """Each successful row's image object exists with the row's sha256."""
        for key, row in images.items():
            name = row["file"]
            if name not in c.listing:
                c.problem(f"{name}: missing image for key {key} (row in {c.metadata})")
            elif (got := c.sha256(name)) is not None and got != row["sha256"]:
                c.problem(f"{name}: sha256 mismatch with its row in {c.metadata} (key {key})")
        return {r["file"] for r in images.values() if r["file"]}
