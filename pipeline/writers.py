"""Shard writers: where one shard's images and metadata go, committed in a fixed order.

Every format follows the same protocol: data objects first, the shard's metadata
next, ``SSSSS_stats.json`` (the commit marker) last, created with If-None-Match so
a marker is never silently replaced. Names are deterministic, so a retried shard
overwrites its earlier, uncommitted attempt. The marker lists the sha256 of every
data object; ``synthset verify`` checks them.

``--retry-failed`` reopens a committed shard (``replace=True``): the successful images
are carried over, the data objects and metadata are rewritten under the same names,
and the marker is replaced last by one atomic overwrite (see :func:`replace_marker`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import OutputFolder, StorageError, json_bytes

log = logging.getLogger("synthset")
FORMATS = ("files", "webdataset", "parquet")


def marker_name(shard_name: str) -> str:
    return f"{shard_name}_stats.json"


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def file_sha256(f: IO[bytes]) -> str:
    """sha256 of a whole seekable file, read in 1 MiB blocks."""
    f.seek(0)
    digest = hashlib.sha256()
    while block := f.read(2**20):
        digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """The commit protocol shared by every format; subclasses say what the data objects are.

    Interface: ``carry(images)`` once for a reopened shard, ``put_image(key, data) -> name``
    (thread-safe) while the shard runs, then ``commit(table, stats) -> stats`` once. If
    the shard's marker already exists (an earlier attempt committed it, but its result was
    lost), nothing is written and the committed marker is returned: committed data is
    never overwritten. With ``replace=True`` (``--retry-failed``) that marker is instead
    remembered as ``previous`` and replaced at commit.
    """

    def __init__(self, folder: OutputFolder, shard_name: str, extension: str,
                 replace: bool = False):
        self.folder, self.shard_name, self.extension = folder, shard_name, extension
        self.committed = folder.read_json(marker_name(shard_name))
        self.previous = None
        if replace:
            self.previous, self.committed = self.committed, None
        self.objects: dict[str, str] = {}  # data object name -> sha256
        self._uploads = {"objects": 0, "bytes": 0, "seconds": 0.0}
        self._lock = threading.Lock()

    def put_image(self, key: str, data: bytes) -> str:
        raise NotImplementedError

    def carry(self, images: dict[str, str]) -> None:
        """Keep the committed images ``{key: sha256}`` of a reopened shard (loose files
        stay where they are; packed formats override this to read them back)."""

    def write_objects(self, table: pa.Table) -> None:
        """Upload the shard's data objects and metadata, recording their checksums."""
        raise NotImplementedError

    def commit(self, table: pa.Table, stats: dict) -> dict:
        """Write the data objects, then the marker; returns the marker's content."""
        if self.committed is not None:
            log.warning("shard %s was already committed by an earlier attempt; keeping it",
                        self.shard_name)
            return self.committed
        self.write_objects(table)
        uploads = {**self._uploads, "seconds": round(self._uploads["seconds"], 3)}
        # retries: the shard's count so far, uploads included (the caller counted earlier)
        stats = {**stats, "format": type(self).format, "retries": self.folder.retry_count,
                 "objects": dict(sorted(self.objects.items())), "uploads": uploads}
        if self.previous is not None:
            return replace_marker(self.folder, self.shard_name, self.previous, stats)
        return commit_marker(self.folder, self.shard_name, stats)

    def upload(self, name: str, payload: bytes | IO[bytes], checksum: bool = True) -> None:
        """One data object: bytes in one PUT, or a seekable file (multipart when large)."""
        t = time.perf_counter()
        if isinstance(payload, bytes):
            self.folder.write_bytes(name, payload)
            size, sha = len(payload), hashlib.sha256(payload).hexdigest() if checksum else ""
        else:
            self.folder.write_file(name, payload)
            size, sha = payload.seek(0, 2), file_sha256(payload) if checksum else ""
        with self._lock:
            if checksum:
                self.objects[name] = sha
            self._uploads["objects"] += 1
            self._uploads["bytes"] += size
            self._uploads["seconds"] += time.perf_counter() - t


def commit_marker(folder: OutputFolder, shard_name: str, stats: dict) -> dict:
    """Create the marker exclusively; an existing one listing the same data is fine."""
    name = marker_name(shard_name)
    data = json_bytes(stats)
    existing = folder.create_bytes(name, data)
    if existing is None or existing == data:
        return stats  # created now, or our own earlier PUT whose response was lost
    previous = json.loads(existing)
    if previous.get("objects") == stats["objects"]:
        log.warning("%s was committed concurrently with identical data; keeping it",
                    folder.display(name))
        return previous
    raise StorageError(
        f"{folder.display(name)} was created by another attempt of this shard while this one "
        "wrote different data objects; delete the marker and rerun the job, then run "
        "`synthset verify`")


def replace_marker(folder: OutputFolder, shard_name: str, previous: dict, stats: dict) -> dict:
    """Overwrite the marker of a retried shard, after its data and metadata were rewritten.

    Safe because the data objects keep their deterministic names and the carried images
    keep their bytes: until this one PUT (``os.replace`` on local disk) the old marker
    stands, and a reader sees the old marker or the new one, never a mix. A crash before
    it leaves the old marker (which still counts failures) over new data: ``verify`` names
    the sha256 mismatch, and rerunning ``--retry-failed`` selects the shard again by that
    count and converges. The marker must still be the one this attempt reopened.
    """
    name = marker_name(shard_name)
    current = folder.read_json(name)
    if current != previous:
        if current is not None and current.get("objects") == stats["objects"]:
            log.warning("%s was replaced concurrently with identical data; keeping it",
                        folder.display(name))
            return current
        raise StorageError(
            f"{folder.display(name)} changed while this retry of the shard ran; rerun "
            "`synthset run JOB --retry-failed`, then `synthset verify`")
    folder.write_bytes(name, json_bytes(stats))
    return stats


class FilesShardWriter(ShardWriter):
    """``files`` format (img2dataset's layout): ``SSSSS/KEY.ext``, ``SSSSS.parquet``, marker."""

    format = "files"

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
        self.upload(f"{self.shard_name}.parquet", parquet_bytes(table))


def make_writer(output_format: str, folder: OutputFolder, shard_name: str,
                extension: str, replace: bool = False) -> ShardWriter:
    """The writer for ``output.format`` (``replace``: reopen a committed shard)."""
    from pipeline.formats import ParquetShardWriter, WebDatasetShardWriter

    writers = {"files": FilesShardWriter, "webdataset": WebDatasetShardWriter,
               "parquet": ParquetShardWriter}
    if output_format not in writers:
        raise ValueError(f"output.format {output_format!r} is not one of {', '.join(writers)}")
    return writers[output_format](folder, shard_name, extension, replace)
