"""Packed shard formats: WebDataset tars and Hugging Face image Parquet.

Images wait in a spooled temp file (memory up to a bound, then disk) until the shard
commits; the tar or Parquet is then built in one pass, in key order so its bytes do
not depend on thread timing, and uploaded once. A million-image job therefore issues
a few PUTs per shard instead of one per image.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
import threading

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.writers import ShardWriter, parquet_bytes

SPOOL_MEMORY_BYTES = 64 * 2**20  # per shard; beyond this, images and tars spill to disk
PARQUET_ROW_GROUP = 100  # rows per group at least: HF's figure for image datasets
# ...and up to this many image bytes: 100 rows of 64x64 JPEGs is 200 KB, and the per-group
# cost of 20-odd column chunks then took half the shard's write time.
PARQUET_GROUP_IMAGE_BYTES = 8 * 2**20
# The JSON of each tar sample: the same keys and, per job, the same types in every sample
# (HF infers its features from the first five). Input columns, which may be null in some
# rows only, stay in SSSSS.parquet; join on "key".
TAR_JSON_FIELDS = ("key", "id", "prompt", "negative_prompt", "seed", "image_index", "width",
                   "height", "sha256", "truncated", "model", "model_family", "steps",
                   "guidance_scale")
IMAGE_FEATURE = {"_type": "Image"}


class ImageSpool:
    """Encoded images of one shard, appended from many threads, read back by key."""

    def __init__(self) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
        self.index: dict[str, tuple[int, int]] = {}  # key -> (offset, length)
        self.size = 0
        self._lock = threading.Lock()

    def add(self, key: str, data: bytes) -> None:
        with self._lock:
            offset = self.file.seek(0, 2)
            self.file.write(data)
            self.index[key] = (offset, len(data))
            self.size = offset + len(data)

    def get(self, key: str) -> bytes:
        with self._lock:
            offset, length = self.index[key]
            self.file.seek(offset)
            return self.file.read(length)

    def close(self) -> None:
        self.file.close()


class _PackedWriter(ShardWriter):
    container = ""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.spool = ImageSpool()

    @property
    def object_name(self) -> str:
        return f"{self.shard_name}.{self.container}"

    def put_image(self, key: str, data: bytes) -> str:
        """Keep one image for the shard's object (thread-safe); returns where it will live."""
        if self.committed is None:
            self.spool.add(key, data)
        return f"{self.object_name}/{key}.{self.extension}"

    def commit(self, table: pa.Table, stats: dict) -> dict:
        try:
            return super().commit(table, stats)
        finally:
            self.spool.close()

    def carry(self, images: dict[str, str]) -> None:
        """Read the committed images back from the shard's object into the spool, checking
        each against its row's sha256 so a damaged object is never carried forward."""
        if not images:
            return
        self.spool.close()
        self.spool = ImageSpool()  # a retried read starts over
        self.folder.call("reading", self.object_name, lambda: self._read_images(images))
        missing = sorted(set(images) - set(self.spool.index))
        if missing:
            raise ValueError(f"{self.folder.display(self.object_name)} lacks the committed "
                             f"images of keys {', '.join(missing[:5])}; run `synthset verify`")

    def _read_images(self, images: dict[str, str]) -> None:
        for key, data in self.stored_images():
            if key in images:
                if hashlib.sha256(data).hexdigest() != images[key]:
                    raise ValueError(f"{self.folder.display(self.object_name)}: the image of "
                                     f"key {key} does not match its row's sha256")
                self.spool.add(key, data)

    def stored_images(self):
        """Yield (key, image bytes) from the committed object."""
        raise NotImplementedError


class WebDatasetShardWriter(_PackedWriter):
    """``webdataset``: ``SSSSS.tar`` (KEY.ext, KEY.json, KEY.txt per successful sample),
    ``SSSSS.parquet`` (every row, failures included), marker."""

    format, container = "webdataset", "tar"

    def write_objects(self, table: pa.Table) -> None:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as f:
            self.write_tar(f, table)
            self.upload(self.object_name, f)
        self.upload(f"{self.shard_name}.parquet", parquet_bytes(table))

    def stored_images(self):
        with self.folder.open(self.object_name) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if info.isfile() and ext == self.extension:
                    yield key, tar.extractfile(info).read()

    def write_tar(self, f, table: pa.Table) -> None:
        """Members in key order with fixed metadata, so equal images give an equal tar."""
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for row in table.filter(pc.equal(table["status"], "success")).to_pylist():
                key = row["key"]
                meta = {k: row.get(k) for k in TAR_JSON_FIELDS}
                meta["negative_prompt"] = meta["negative_prompt"] or ""
                _add_member(tar, f"{key}.{self.extension}", self.spool.get(key))
                _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True,
                                                           default=str).encode())
                _add_member(tar, f"{key}.txt", row["prompt"].encode())


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


class ParquetShardWriter(_PackedWriter):
    """``parquet``: ``SSSSS.parquet`` with every row and an ``image`` column that
    ``datasets`` reads as PIL images (HF ``Image`` feature), then the marker."""

    format, container = "parquet", "parquet"

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

    def stored_images(self):
        with self.folder.open(self.object_name) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=PARQUET_ROW_GROUP,
                                                        columns=["key", "image"]):
                for key, image in zip(batch["key"].to_pylist(), batch["image"].to_pylist()):
                    if image and image["bytes"] is not None:
                        yield key, image["bytes"]

    def image_column(self, part: pa.Table) -> pa.Array:
        images = [{"bytes": self.spool.get(k), "path": f"{k}.{self.extension}"}
                  if status == "success" else None
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
