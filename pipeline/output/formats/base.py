"""What every output format shares: the commit protocol, and the context its verifier gets.

An output format is one module in this package with one :class:`ShardWriter` subclass that
owns three things: writing a shard (``put_image``/``write_objects``), reading a committed
shard's images back (``read_images``), and verifying a committed shard (``check``).
The registry in ``__init__.py`` names them.

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
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.output.layout import marker_name, metadata_name
from pipeline.output.storage import OutputFolder, StorageError, json_bytes

log = logging.getLogger("synthset")


SAMPLE_FIELD = {b"synthset": b"sample"}  # field metadata: a per-sample quality column
# Row statuses whose image is stored: a sample's image, and a draw best-of-n did not keep
# (stored only with quality.keep_rejected; its key is KEY_aN)
SUCCEEDED, REJECTED = "success", "rejected"
STORED = (SUCCEEDED, REJECTED)
# How a sample fails in generation (an ``error`` row's message starts with one of these);
# --retry-failed retries these. Every other error is about the input row itself, and
# regenerating cannot change it.
GENERATION_FAILED = "generation failed"
BLANK_IMAGE = "generator returned a blank image"


def retryable(error_message: str | None) -> bool:
    """Whether a failed sample failed in generation (and may succeed on a retry)."""
    return bool(error_message) and error_message.startswith((GENERATION_FAILED, BLANK_IMAGE))


def sample_fields(schema: pa.Schema) -> list[str]:
    """The columns a job's quality stage flagged as per-sample fields (``SAMPLE_FIELD``):
    they go into each WebDataset sample's JSON and are carried over on a retry."""
    return [f.name for f in schema if f.metadata and f.metadata.get(b"synthset") == b"sample"]


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

    The class side reads committed shards back: :meth:`read_images` (report, retries) and
    :meth:`check` (``synthset verify``).
    """

    format = ""  # the name in output.format
    description = ""  # one line for the docs' format table and `synthset formats`

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


    @classmethod
    def look_at(cls, output: str, shard_name: str) -> str:
        """Where a user finds a committed shard's images and metadata (the run's last hint)."""
        return f"{output}/{metadata_name(shard_name)} (metadata)"

    @classmethod
    def stored_images(cls, folder: OutputFolder, shard_name: str, rows: list[dict]):
        """Yield ``(key, image bytes)`` of a committed shard; ``rows`` are its successful
        metadata rows (``key``, ``file``), in key order. Packed formats may yield more."""
        raise NotImplementedError

    @classmethod
    def read_images(cls, folder: OutputFolder, shard_name: str,
                    rows: list[dict]) -> dict[str, bytes]:
        """``{key: image bytes}`` for the successful metadata ``rows`` of a committed shard."""
        wanted = {r["key"] for r in rows}
        found: dict[str, bytes] = {}

        def read() -> None:
            found.clear()
            for key, data in cls.stored_images(folder, shard_name, rows):
                if key in wanted:
                    found[key] = data
                    if len(found) == len(wanted):
                        return  # stored in key order: early rows come early
        folder.call("reading", shard_name, read)
        return found

    @classmethod
    def check(cls, c: ShardCheck, images: dict[str, dict]) -> set[str]:
        """Verify the images of the stored rows ``images`` (``{key: row}``: successes, and
        rejected draws kept with ``quality.keep_rejected``); returns the object names
        accounted for beyond the marker's own list."""
        raise NotImplementedError


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



@dataclass
class ShardCheck:
    """One committed shard being verified: where it is, its marker, the folder's listing,
    and the report that collects problems."""

    folder: OutputFolder
    shard: str
    marker: dict
    listing: dict[str, int]
    report: Any  # verify.Report: counts checked and one line per problem

    def problem(self, text: str) -> None:
        self.report.problems.append(text)
        self.report.damaged.add(self.shard)

    @property
    def metadata(self) -> str:
        return metadata_name(self.shard)

    def sha256(self, name: str) -> str | None:
        """sha256 of object ``name``, or None (and a problem) if it cannot be read."""
        def read() -> str:
            with self.folder.open(name) as f:
                return file_sha256(f)
        try:
            digest = self.folder.call("reading", name, read)
        except StorageError as e:
            self.problem(f"{name}: unreadable ({e})")
            return None
        self.report.objects += 1
        self.report.bytes += self.listing.get(name, 0)
        return digest
