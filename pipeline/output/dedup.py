"""``synthset dedup``: near-duplicate and exact-duplicate groups across a whole output.

After every shard commits (and on demand on any committed output), the ``ahash``,
``colour_2x2`` and ``sha256`` columns of the successful rows (rejected draws kept with
``quality.keep_rejected`` take no part: they are not the dataset's samples, and would
group with their own sample) are streamed from the shard Parquets a row group at a time
into local spill files; ``lsh.near_pairs`` joins average hashes within
``quality.dedup_threshold`` bits whose quarters' colours agree
(``scorers.phash.colours_close``), and equal sha256s (their first 64 bits: a chance
collision among 10 million images is about 3 in a million), in bounded memory. Outputs
written before ``ahash`` existed are grouped by ``phash`` alone. The result,
``_duplicates.pq``, has one row per image in a group of two or more: ``key``, ``group``
and ``representative`` (the group's first key).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.output.formats.base import parquet_bytes
from pipeline.output.layout import DUPLICATES, JOB, SUCCESS, metadata_name
from pipeline.output.lsh import SpillFile, UnionFind, near_pairs
from pipeline.output.progress import committed_shards
from pipeline.output.storage import OutputFolder
from pipeline.stages.scorers.phash import colours_close

log = logging.getLogger("synthset")
# the near-duplicate signatures the phash scorer writes (outputs from before ahash existed
# have phash alone, grouped by it as they were), and the exact one
NEAR_COLUMNS = ["sha256", "ahash", "colour_2x2", "phash"]
READERS = 8  # shard Parquets read at once
SCHEMA = pa.schema([("key", pa.string()), ("group", pa.int64()),
                    ("representative", pa.string())])


def _row_groups(folder: OutputFolder, names: list[str], columns: list[str],
                readers: int = READERS) -> Iterator[pa.Table]:
    """The successful rows of each shard, ``columns`` only, a row group at a time, in
    shard order. ``readers`` shards are fetched at once: on object storage each read is
    several round trips, which one after another cost ~40 minutes at 10,000 shards and
    30 ms a request (measured: docs/quality.md); at most ``2 × readers`` shards' columns
    (hashes and keys, ~100-200 KB each) are held ahead."""
    shards = iter(names)
    with ThreadPoolExecutor(readers, thread_name_prefix="dedup-read") as pool:
        ahead = deque(pool.submit(_shard_rows, folder, n, columns)
                      for n in islice(shards, 2 * readers))
        while ahead:
            tables = ahead.popleft().result()
            for name in islice(shards, 1):
                ahead.append(pool.submit(_shard_rows, folder, name, columns))
            yield from tables


def _shard_rows(folder: OutputFolder, name: str, columns: list[str]) -> list[pa.Table]:
    """One shard's successful rows, ``columns`` only, one table per row group."""
    with folder.open(metadata_name(name)) as f:
        meta = pq.ParquetFile(f)
        wanted = [c for c in columns if c in meta.schema_arrow.names]
        tables = [meta.read_row_group(i, columns=["status", *wanted])
                  for i in range(meta.num_row_groups)]
    return [t.filter(pc.equal(t["status"], "success")) for t in tables]


def _as_u64(column: pa.ChunkedArray, instead: pa.ChunkedArray | None = None) -> np.ndarray:
    """Hex strings (their first 16 digits) as uint64. A null takes its value from
    ``instead`` (the row's sha256): an unhashed image then only matches its exact copies."""
    if instead is not None and column.null_count:
        column = pc.if_else(pc.is_null(column), instead, column)
    text = pc.utf8_slice_codeunits(column, 0, 16).to_pylist()
    return np.array([int(t, 16) for t in text], np.uint64)


def find_groups(folder: OutputFolder, threshold: int = 4, bands: int = 4,
                max_rows: int = 1 << 21) -> tuple[pa.Table, dict]:
    """The duplicate groups of a committed output, and the search's stats."""
    names = sorted(committed_shards(folder))
    spills = {c: SpillFile() for c in NEAR_COLUMNS}
    try:
        for table in _row_groups(folder, names, NEAR_COLUMNS):
            for column in NEAR_COLUMNS:  # a missing hash: the row matches exact copies only
                if column in table.column_names:
                    spills[column].append(_as_u64(table[column], table["sha256"]))
        sha = spills["sha256"]
        found, stats = near_pairs(sha, 0, 1, max_rows)  # exact copies: equal sha256 prefix
        # one signature for every row: ahash confirmed by colour, else (older outputs) phash
        kind = next((k for k in ("ahash", "phash") if sha.rows and spills[k].rows == sha.rows
                     and (k == "phash" or spills["colour_2x2"].rows == sha.rows)), None)
        if kind is not None:
            confirm = (spills["colour_2x2"], colours_close) if kind == "ahash" else (None, None)
            found, more = near_pairs(spills[kind], threshold, bands, max_rows, found, *confirm)
            stats = {k: stats[k] + more[k] if k != "max_rows_held" else max(stats[k], more[k])
                     for k in stats}
        stats["rows"] = sha.rows
    finally:
        for spill in spills.values():
            spill.close()
    table = _group_table(folder, names, found)
    stats.update(groups=len(set(table["group"].to_pylist())), images=table.num_rows,
                 phash=kind is not None, signature=kind, threshold=threshold)
    return table, stats


def _group_table(folder: OutputFolder, names: list[str], found: UnionFind) -> pa.Table:
    """Rows of the groups, keys read back for the grouped rows only."""
    groups = found.groups()
    member = {row: lead for lead, rows in groups.items() for row in rows}
    keys: dict[int, str] = {}
    start = 0
    for table in _row_groups(folder, names, ["key"]):
        for i, key in enumerate(table["key"].to_pylist()):
            if start + i in member:
                keys[start + i] = key
        start += table.num_rows
    ordered = sorted(groups.values(), key=lambda rows: keys[rows[0]])
    out = [(keys[r], g, keys[rows[0]]) for g, rows in enumerate(ordered) for r in rows]
    return pa.Table.from_pylist([dict(zip(SCHEMA.names, o)) for o in out], schema=SCHEMA)


def write_duplicates(folder: OutputFolder, threshold: int = 4, bands: int = 4) -> dict:
    """Write ``_duplicates.pq``; returns the summary ``_SUCCESS`` keeps."""
    table, stats = find_groups(folder, threshold, bands)
    folder.write_bytes(DUPLICATES, parquet_bytes(table))
    log.info("duplicates of %s: %d groups, %d images (%d candidates compared)",
             folder.display(), stats["groups"], stats["images"], stats["candidates"])
    return {k: stats[k] for k in ("groups", "images", "rows", "threshold", "phash", "signature")}


def rerun_dedup(folder: OutputFolder, threshold: int | None = None,
                bands: int | None = None) -> dict:
    """``synthset dedup``: regroup a committed output (defaults from its ``_job.json``);
    a complete job's ``_SUCCESS`` gets the new summary."""
    job = folder.read_json(JOB)
    if job is None:
        raise FileNotFoundError(f"{folder.display()} holds no synthset job ({JOB} missing)")
    quality = job["spec"].get("quality") or {}
    summary = write_duplicates(folder, quality.get("dedup_threshold", 4) if threshold is None
                               else threshold, bands or quality.get("dedup_bands", 4))
    manifest = folder.read_json(SUCCESS)
    if manifest is not None:
        manifest.setdefault("quality", {})["duplicates"] = summary
        folder.write_json(SUCCESS, manifest)
    return summary
