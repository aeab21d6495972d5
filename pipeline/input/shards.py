"""Deterministic shard planning from Parquet metadata, and img2dataset's SSSSSIIII keys."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.input.sources import InputFile, InputSet


@dataclass(frozen=True)
class Segment:
    """Rows [start, stop) of one input source (a Parquet file, or a prompt template)."""

    source: InputFile
    start: int
    stop: int

    @property
    def name(self) -> str:
        return self.source.name

    def read(self, storage_options: dict[str, Any]) -> Iterator[pa.Table]:
        """The rows as Arrow tables, a bounded chunk (one row group) at a time."""
        return self.source.read(self.start, self.stop, storage_options)


@dataclass(frozen=True)
class Shard:
    """The unit of work: a stable id and the input rows it covers, in order.

    ``retry_keys`` (``--retry-failed``): the shard is committed; regenerate only these
    failed samples and carry the rest over. None for a first run.
    """

    id: int
    segments: tuple[Segment, ...]
    retry_keys: tuple[str, ...] | None = None

    @property
    def num_rows(self) -> int:
        return sum(s.stop - s.start for s in self.segments)


@dataclass(frozen=True)
class KeyFormat:
    """Zero-padded widths for shard ids and per-shard image indices."""

    shard_digits: int
    index_digits: int

    def shard_name(self, shard_id: int) -> str:
        return f"{shard_id:0{self.shard_digits}d}"

    def key(self, shard_id: int, index: int) -> str:
        return f"{shard_id:0{self.shard_digits}d}{index:0{self.index_digits}d}"


REJECTED_MARK = "_a"  # KEY_aN: a stored rejected draw (quality.keep_rejected)


def rejected_key(key: str, attempt: int) -> str:
    """The key of draw ``attempt`` of sample ``key``, stored as a rejected draw. Sample keys
    are digits only, so it never equals one; it has no dot, so WebDataset reads it whole;
    it sorts right after its sample's key."""
    return f"{key}{REJECTED_MARK}{attempt}"


def split_rejected_key(key: str) -> tuple[str, int] | None:
    """``(sample key, attempt)`` of a rejected draw's key, or None for any other key."""
    base, mark, attempt = key.rpartition(REJECTED_MARK)
    if not mark or not base.isdigit() or not attempt.isdigit():
        return None
    return base, int(attempt)


def key_format(num_shards: int, shard_size: int, images_per_prompt: int) -> KeyFormat:
    """At least img2dataset's 5+4 digits, wider only when the job needs it."""
    return KeyFormat(max(5, len(str(max(num_shards - 1, 0)))),
                     max(4, len(str(shard_size * images_per_prompt - 1))))


def num_shards(inputs: InputSet, shard_size: int) -> int:
    return -(-inputs.num_rows // shard_size)


def plan_shards(inputs: InputSet, shard_size: int):
    """Yield shards of ``shard_size`` consecutive rows across the files, in file order.

    A shard's id depends only on the files and the shard size, so it never changes
    across reruns of the same job and input.
    """
    segments: list[Segment] = []
    filled, shard_id = 0, 0
    for f in inputs.files:
        row = 0
        while row < f.num_rows:
            take = min(shard_size - filled, f.num_rows - row)
            segments.append(Segment(f, row, row + take))
            row, filled = row + take, filled + take
            if filled == shard_size:
                yield Shard(shard_id, tuple(segments))
                segments, filled, shard_id = [], 0, shard_id + 1
    if segments:
        yield Shard(shard_id, tuple(segments))
