"""The job manifest: ``_manifest.pq`` (a Parquet file, one row per shard) and ``_SUCCESS``.

At 100,000 shards a manifest listing every shard's counts and checksums inside
``_SUCCESS`` was a 30 MB JSON document; now ``_SUCCESS`` stays a small summary that
names the Parquet manifest and its sha256, and the rows live in ``_manifest.pq``
(written first, so a ``_SUCCESS`` always points at a complete manifest). Readers accept
the earlier layout too (``"shards"`` inside ``_SUCCESS``).

The driver builds the rows in a :class:`Ledger` as shards commit (the executor hands it
each marker), so a run reads back only the markers that earlier runs committed, on a
background thread, while its own shards generate.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.output.layout import MANIFEST, SUCCESS, marker_name
from pipeline.output.storage import OutputFolder

COLUMNS = ("shard_name", "count", "successes", "failed", "objects")
SCHEMA = pa.schema([("shard_name", pa.string()), ("count", pa.int64()),
                    ("successes", pa.int64()), ("failed", pa.int64()),
                    ("objects", pa.string())])  # {name: sha256} as JSON
READ_THREADS = 32  # marker GETs in flight: S3 answers each in ~20 ms, so latency bound


def manifest_entry(marker: dict) -> dict[str, Any]:
    """The part of a marker the manifest keeps (and verify compares); a damaged marker's
    missing fields are None, for verify to report. Its quality counts ride along for
    ``_SUCCESS``'s summary (they are not manifest columns)."""
    entry = {k: marker.get(k) for k in COLUMNS}
    if marker.get("quality"):
        entry["quality"] = marker["quality"]
    return entry


def read_markers(folder: OutputFolder, names: list[str], entries_only: bool = False,
                 threads: int = READ_THREADS) -> list[dict]:
    """The markers of shards ``names``, in order, fetched concurrently; ``entries_only``
    keeps just their manifest entries (a few hundred bytes instead of a few KB each)."""
    def one(name: str) -> dict:
        marker = folder.read_json(marker_name(name))
        return manifest_entry(marker) if entries_only and marker is not None else marker
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, names))


def manifest_bytes(entries: Iterable[dict]) -> bytes:
    """``_manifest.pq``: one row per shard, sorted by name."""
    rows = sorted(entries, key=lambda e: e["shard_name"])
    columns = {k: [r[k] for r in rows] for k in COLUMNS[:-1]}
    columns["objects"] = [json.dumps(r["objects"], sort_keys=True, separators=(",", ":"))
                          for r in rows]
    sink = io.BytesIO()
    pq.write_table(pa.table(columns, schema=SCHEMA), sink, compression="zstd")
    return sink.getvalue()


def write_manifest(folder: OutputFolder, summary: dict[str, Any],
                   entries: list[dict]) -> dict[str, Any]:
    """Write ``_manifest.pq``, then ``_SUCCESS`` (the summary naming it), last."""
    data = manifest_bytes(entries)
    folder.write_bytes(MANIFEST, data)
    summary = {**summary, "shards_committed": len(entries),
               "manifest": {"name": MANIFEST, "sha256": hashlib.sha256(data).hexdigest(),
                            "bytes": len(data)}}
    folder.write_json(SUCCESS, summary)
    return summary


def read_entries(folder: OutputFolder, success: dict[str, Any],
                 columns: tuple[str, ...] = COLUMNS) -> list[dict]:
    """The manifest's rows (``objects`` as a dict), from either layout of ``_SUCCESS``.
    Raises ValueError if the Parquet manifest is missing or not the one ``_SUCCESS`` names."""
    if "shards" in success:  # the earlier layout: every shard inside _SUCCESS
        return [{k: s[k] for k in columns} for s in success["shards"]]
    want = success["manifest"]
    try:
        data = folder.read_bytes(want["name"])
    except Exception as e:
        raise ValueError(f"{want['name']} (named by {SUCCESS}) is unreadable: {e}") from None
    if hashlib.sha256(data).hexdigest() != want["sha256"]:
        raise ValueError(f"{want['name']}: sha256 differs from the one {SUCCESS} records")
    rows = pq.read_table(io.BytesIO(data), columns=list(columns)).to_pylist()
    for r in rows if "objects" in columns else ():
        r["objects"] = json.loads(r["objects"])
    return rows


def shards_committed(success: dict[str, Any]) -> int:
    """How many shards a ``_SUCCESS`` of either layout covers."""
    return len(success["shards"]) if "shards" in success else success["shards_committed"]


class Ledger:
    """The committed shards' manifest entries, as the driver learns them.

    Shards committed by earlier runs are read back on a background thread (their
    names are all a resume needs to start); shards of this run arrive through
    :meth:`add` with the marker the actor wrote. :meth:`entries` waits for both.
    """

    def __init__(self, folder: OutputFolder, earlier: list[str]):
        self.earlier = len(earlier)
        self._entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.earlier_done = self.earlier_failed = 0  # summed as the markers are read
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(folder, earlier),
                                        name="synthset-ledger", daemon=True)
        self._thread.start()

    def _read(self, folder: OutputFolder, names: list[str]) -> None:
        try:
            for i in range(0, len(names), 1000):  # a chunk at a time: counts show up early
                for entry in read_markers(folder, names[i:i + 1000], entries_only=True):
                    if entry is not None:  # deleted since the listing: regenerated later
                        self._put(entry, earlier=True)
        except BaseException as e:  # surfaced by entries()
            self._error = e

    def _put(self, entry: dict, earlier: bool = False) -> None:
        with self._lock:
            if earlier and entry["shard_name"] in self._entries:
                return  # this run already recommitted it (--retry-failed): keep the newer
            self._entries[entry["shard_name"]] = entry
            if earlier:
                self.earlier_done += entry["successes"]
                self.earlier_failed += entry["failed"]

    def add(self, marker: dict) -> None:
        """A shard this run committed (the marker its actor wrote)."""
        self._put(manifest_entry(marker))

    def entries(self) -> list[dict]:
        """Every entry, sorted by shard name, once the earlier markers are all read."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        with self._lock:
            return [self._entries[k] for k in sorted(self._entries)]
