"""``parquet``: one Hugging Face image Parquet per shard.

``SSSSS.parquet`` holds every row (failures included) and an ``image`` column of
``struct<bytes, path>`` with the ``huggingface`` schema metadata that makes ``datasets``
decode it as images; then the marker. Row groups are sized so a reader holds one modest
group in memory at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.output.formats.base import STORED, ShardCheck
from pipeline.output.formats.packed import SPOOL_MEMORY_BYTES, PackedWriter
from pipeline.output.layout import metadata_name
from pipeline.output.storage import OutputFolder

PARQUET_ROW_GROUP = 100  # rows per group at least: HF's figure for image datasets
# ...and up to this many image bytes: 100 rows of 64x64 JPEGs is 200 KB, and the per-group
# cost of 20-odd column chunks then took half the shard's write time.
PARQUET_GROUP_IMAGE_BYTES = 8 * 2**20
IMAGE_FEATURE = {"_type": "Image"}


class ParquetShardWriter(PackedWriter):
    """``parquet``: ``SSSSS.parquet`` with every row and an ``image`` column that
    ``datasets`` reads as PIL images (HF ``Image`` feature), then the marker."""

    format, container = "parquet", "parquet"
    description = ("`SSSSS.parquet` with every row and an `image` column (HF `Image` feature); "
                   "loads with HF `datasets` and pyarrow")

    def write_objects(self, table: pa.Table) -> None:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as f:
            self.write_parquet(f, table)
            self.upload(self.object_name, f)

    def write_parquet(self, f, table: pa.Table) -> None:
        """Row groups of at least PARQUET_ROW_GROUP rows, more while their images stay under
        PARQUET_GROUP_IMAGE_BYTES, so a reader holds one modest group in memory at a time."""
        if "image" in table.column_names:  # an input column of that name keeps its data
            table = table.rename_columns(
                [f"input_{n}" if n == "image" else n for n in table.column_names])
        schema = with_image_feature(table.schema)
        # Image bytes are compressed already and all distinct: zstd, a dictionary and
        # min/max statistics over them cost CPU for nothing (measured: 2.3x slower writes).
        others = [c for c in leaf_columns(schema) if c != "image.bytes"]
        with pq.ParquetWriter(f, schema, compression={**dict.fromkeys(others, "zstd"),
                                                      "image.bytes": "none"},
                              use_dictionary=others, write_statistics=others) as out:
            mean_image = self.spool.size / max(len(self.spool.index), 1)
            rows = max(PARQUET_ROW_GROUP, int(PARQUET_GROUP_IMAGE_BYTES // max(mean_image, 1)))
            for start in range(0, max(len(table), 1), rows):
                part = table.slice(start, rows)
                out.write_table(pa.Table.from_arrays(
                    [*part.columns, self.image_column(part)], schema=schema))

    @classmethod
    def look_at(cls, output: str, shard_name: str) -> str:
        return f"{output}/{metadata_name(shard_name)} (images and metadata)"

    @classmethod
    def stored_images(cls, folder: OutputFolder, shard_name: str, rows: list[dict]):
        with folder.open(metadata_name(shard_name)) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=PARQUET_ROW_GROUP,
                                                        columns=["key", "image"]):
                for key, image in zip(batch["key"].to_pylist(), batch["image"].to_pylist()):
                    if image and image["bytes"] is not None:
                        yield key, image["bytes"]

    @classmethod
    def check(cls, c: ShardCheck, images: dict[str, dict]) -> set[str]:
        """Each successful row embeds image bytes with the row's sha256."""
        def scan() -> dict[str, str]:
            return {key: hashlib.sha256(data).hexdigest()
                    for key, data in cls.stored_images(c.folder, c.shard, [])}
        try:
            found = c.folder.call("reading", c.metadata, scan)
        except Exception as e:
            c.problem(f"{c.metadata}: cannot read its image column ({type(e).__name__}: "
                      f"{str(e)[:200]})")
            return set()
        for key, row in images.items():
            if found.get(key) is None:
                c.problem(f"{c.metadata}: successful key {key} has no image bytes")
            elif found[key] != row["sha256"]:
                c.problem(f"{c.metadata}: image of key {key} sha256 mismatch with its row")
        return set()

    def image_column(self, part: pa.Table) -> pa.Array:
        images = [{"bytes": self.spool.get(k), "path": f"{k}.{self.extension}"}
                  if status in STORED else None
                  for k, status in zip(part["key"].to_pylist(), part["status"].to_pylist())]
        return pa.array(images, IMAGE_TYPE)


IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def leaf_columns(schema: pa.Schema) -> list[str]:
    """The Parquet leaf column paths of ``schema`` (``tags.list.element``, ``image.bytes``),
    as per-column writer options name them; a leaf missing from those goes uncompressed."""
    buf = io.BytesIO()
    pq.write_table(schema.empty_table(), buf)
    parquet_schema = pq.ParquetFile(buf).schema
    return [parquet_schema.column(i).path for i in range(len(parquet_schema))]


def with_image_feature(schema: pa.Schema) -> pa.Schema:
    """``schema`` plus an ``image`` column and the metadata ``datasets`` needs to decode it."""
    hf = {"info": {"features": {"image": IMAGE_FEATURE}}}
    return schema.append(pa.field("image", IMAGE_TYPE)).with_metadata(
        {"huggingface": json.dumps(hf)})
