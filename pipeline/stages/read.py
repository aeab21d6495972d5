"""Stage 1, read: a shard's input rows, then its samples (keys, seeds, quarantined rows).

The next shard's rows can be read on a thread while the current shard generates
(:class:`ShardReader`): once generation is fast, the read would otherwise idle the device.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa

from pipeline.input.shards import KeyFormat, Shard
from pipeline.spec import JobSpec
from pipeline.stages.samples import Sample, build_samples


def read_rows(shard: Shard, storage_options: dict, timings: Counter) -> pa.Table:
    """The shard's input rows, one row group at a time, across its segments."""
    t = time.perf_counter()
    parts = [part for seg in shard.segments for part in seg.read(storage_options)]
    timings["read"] += time.perf_counter() - t
    return pa.concat_tables(parts) if parts else pa.table({})


def read_shard(shard: Shard, spec: JobSpec, keys: KeyFormat,
               timings: Counter) -> tuple[pa.Table, list[Sample]]:
    """The shard's input table and one sample per requested image."""
    table = read_rows(shard, spec.storage_options, timings)
    return table, build_samples(table, shard, spec, keys)


class ShardReader:
    """Stage 1 with read-ahead: :meth:`ahead` starts reading a shard's rows on a thread
    (the shard due next, while the current one generates); calling the reader for that
    shard then takes them, or reads now if it was another shard."""

    def __init__(self, spec: JobSpec, keys: KeyFormat):
        self.spec, self.keys = spec, keys
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="synthset-read")
        self.pending: tuple[Shard, Future] | None = None

    def ahead(self, shard: Shard) -> None:
        """Start reading ``shard``'s input rows in the background."""
        self.pending = (shard, self.pool.submit(read_rows, shard, self.spec.storage_options,
                                                Counter()))

    def __call__(self, shard: Shard, timings: Counter) -> tuple[pa.Table, list[Sample]]:
        """The shard's input table and samples; "read" times what the caller waited."""
        pending, self.pending = self.pending, None
        if pending is None or pending[0] != shard:
            return read_shard(shard, self.spec, self.keys, timings)
        t = time.perf_counter()
        table = pending[1].result()
        timings["read"] += time.perf_counter() - t
        return table, build_samples(table, shard, self.spec, self.keys)
