"""Stage 1, read: a shard's input rows, then its samples (keys, seeds, quarantined rows)."""

from __future__ import annotations

import time
from collections import Counter

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
