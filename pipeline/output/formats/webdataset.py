"""``webdataset``: one tar per shard that ``webdataset`` and HF ``datasets`` load as is.

``SSSSS.tar`` holds ``KEY.ext``, ``KEY.json`` and ``KEY.txt`` per successful sample (and per
stored rejected draw, ``KEY_aN``, whose JSON says ``"kept": false``), in the metadata's row
order with fixed member metadata (equal images give an equal tar); ``SSSSS.parquet`` keeps
every row, failures included; then the marker.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.output.formats.base import STORED, ShardCheck, parquet_bytes, sample_fields
from pipeline.output.formats.packed import SPOOL_MEMORY_BYTES, PackedWriter
from pipeline.output.layout import metadata_name
from pipeline.output.storage import OutputFolder, StorageError

# The JSON of each tar sample: the same keys and, per job, the same types in every sample
# (HF infers its features from the first five). Input columns, which may be null in some
# rows only, stay in SSSSS.parquet; join on "key".
TAR_JSON_FIELDS = ("key", "id", "prompt", "negative_prompt", "seed", "image_index", "width",
                   "height", "sha256", "truncated", "model", "model_family", "steps",
                   "guidance_scale")
SIDECARS = ("json", "txt")  # the members of a sample that are not its image


class WebDatasetShardWriter(PackedWriter):
    """``webdataset``: ``SSSSS.tar`` (KEY.ext, KEY.json, KEY.txt per successful sample),
    ``SSSSS.parquet`` (every row, failures included), marker."""

    format, container = "webdataset", "tar"
    description = ("`SSSSS.tar` (image, .json, .txt per sample) + `SSSSS.parquet`; loads with "
                   "`webdataset` and HF `datasets`")

    def write_objects(self, table: pa.Table) -> None:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as f:
            self.write_tar(f, table)
            self.upload(self.object_name, f)
        self.upload(metadata_name(self.shard_name), parquet_bytes(table))

    def write_tar(self, f, table: pa.Table) -> None:
        """Members in key order with fixed metadata, so equal images give an equal tar."""
        fields = json_fields(table.schema)
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            stored = pc.is_in(table["status"], pa.array(STORED))  # rejected draws too, if kept
            for row in table.filter(stored).to_pylist():
                key = row["key"]
                meta = {k: row.get(k) for k in fields}
                meta["negative_prompt"] = meta["negative_prompt"] or ""
                _add_member(tar, f"{key}.{self.extension}", self.spool.get(key))
                _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True,
                                                           default=str).encode())
                _add_member(tar, f"{key}.txt", row["prompt"].encode())

    @classmethod
    def look_at(cls, output: str, shard_name: str) -> str:
        return (f"{output}/{shard_name}.tar (images), {output}/{metadata_name(shard_name)} "
                "(metadata)")

    @classmethod
    def stored_images(cls, folder: OutputFolder, shard_name: str, rows: list[dict]):
        with folder.open(f"{shard_name}.tar") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if info.isfile() and ext not in SIDECARS:
                    yield key, tar.extractfile(info).read()

    @classmethod
    def check(cls, c: ShardCheck, images: dict[str, dict]) -> set[str]:
        """The tar holds image, json and txt for exactly the successful keys."""
        name = f"{c.shard}.tar"
        if name not in c.listing:
            return set()  # reported against the marker
        try:
            members = c.folder.call("reading", name, lambda: _member_digests(c.folder, name))
        except (StorageError, tarfile.TarError) as e:
            c.problem(f"{name}: unreadable tar ({type(e).__name__}: {str(e)[:200]})")
            return set()
        for key, row in images.items():
            got = members.pop(key, {})
            ext = row["file"].rsplit(".", 1)[-1] if row["file"] else ""
            if set(got) != {ext, *SIDECARS}:
                c.problem(f"{name}: key {key} has members {sorted(got) or 'none'}, "
                          f"expected {ext}, json, txt")
            elif got[ext] != row["sha256"]:
                c.problem(f"{name}: member {key}.{ext} sha256 mismatch with its row in "
                          f"{c.metadata}")
        for key in sorted(members):
            c.problem(f"{name}: members for key {key}, which has no successful row")
        return set()


def json_fields(schema: pa.Schema) -> tuple[str, ...]:
    """The sample JSON's keys: the fixed ones, then the columns a job's quality scorers
    flagged as per-sample (field metadata ``synthset: sample``), the same in every row."""
    return TAR_JSON_FIELDS + tuple(sample_fields(schema))


def _member_digests(folder: OutputFolder, name: str) -> dict[str, dict[str, str]]:
    """``{key: {extension: sha256}}`` of every member of the tar ``name``."""
    members: dict[str, dict[str, str]] = {}
    with folder.open(name) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            data = tar.extractfile(info).read() if info.isfile() else b""
            members.setdefault(key, {})[ext] = hashlib.sha256(data).hexdigest()
    return members


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))
