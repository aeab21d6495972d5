"""Ids repeated anywhere in the input, found in bounded memory before any actor starts.

Pass 1 streams the id column one batch at a time, hashes each id to 64 bits and appends
the hashes to one of ``B`` bucket files by hash; each bucket is then sorted alone, so
memory holds one bucket (``rows / B`` hashes, 8 bytes each), never the whole column.
Pass 2 rereads the column only where a hash repeated, to name the real ids (and rule
out the rare 64-bit collision). A million ids take a few seconds on one core.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.input.sources import InputSet
from pipeline.output.storage import open_input_fs

BUCKET_HASHES = 4_000_000  # 32 MB of hashes held at once
BATCH_ROWS = 65_536


def find_duplicate_ids(inputs: InputSet, column: str, storage_options: dict[str, Any],
                       limit: int = 5, bucket_hashes: int = BUCKET_HASHES) -> list[tuple]:
    """Up to ``limit`` ``(id, count)`` for ids that occur more than once, most repeated
    first; ``[]`` when every id is unique. Null ids are not counted (rows quarantine them)."""
    buckets = max(1, -(-inputs.num_rows // bucket_hashes))
    repeated = _repeated_hashes(inputs, column, storage_options, buckets)
    if not repeated.size:
        return []
    counts: Counter = Counter()
    for ids in _id_batches(inputs, column, storage_options):
        hit = np.isin(_hash(ids), repeated)
        if hit.any():
            counts.update(_readable(ids.filter(pa.array(hit))))
    return [(i, n) for i, n in counts.most_common() if n > 1][:limit]


def _repeated_hashes(inputs: InputSet, column: str, storage_options: dict[str, Any],
                     buckets: int) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="synthset-ids-") as tmp:
        paths = [os.path.join(tmp, f"{b}.u64") for b in range(buckets)]
        files = [open(p, "wb") for p in paths]
        try:
            for ids in _id_batches(inputs, column, storage_options):
                hashes = _hash(ids)
                which = hashes % np.uint64(buckets)
                for b, f in enumerate(files):
                    f.write(hashes[which == b].tobytes())
        finally:
            for f in files:
                f.close()
        found = []
        for path in paths:
            hashes = np.sort(np.fromfile(path, dtype=np.uint64))
            found.append(np.unique(hashes[1:][hashes[1:] == hashes[:-1]]))
    return np.concatenate(found)


def _id_batches(inputs: InputSet, column: str,
                storage_options: dict[str, Any]) -> Iterator[pa.Array]:
    """The non-null ids of every input file, a batch at a time (the id column only)."""
    for f in inputs.files:
        fs, path = open_input_fs(f.path, storage_options)
        with fs.open(path, "rb") as handle:
            for batch in pq.ParquetFile(handle).iter_batches(BATCH_ROWS, columns=[column]):
                ids = batch.column(0)
                yield ids.filter(pc.is_valid(ids))


def _readable(ids: pa.Array) -> list:
    """The ids as Python values; bytes that are not UTF-8 shown with \\x escapes."""
    if not _is_text(ids.type):
        return ids.to_pylist()
    return [v.decode("utf-8", "backslashreplace") for v in ids.cast(pa.binary()).to_pylist()]


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _hash(ids: pa.Array) -> np.ndarray:
    """64-bit hashes of the ids, vectorised (pandas' hash of the values, not their type:
    the ids of one column share a type)."""
    from pandas.util import hash_array

    if _is_text(ids.type):
        ids = ids.cast(pa.binary())  # the bytes: ids that are not valid UTF-8 hash too
    return hash_array(ids.to_numpy(zero_copy_only=False), categorize=False)
