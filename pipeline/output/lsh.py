"""Near-duplicate pairs among many 64-bit hashes in bounded memory: LSH bands, verified.

The hashes live in a spill file on local disk (8 bytes each), never all in memory. For
each band (a slice of the 64 bits) the rows are split into partitions by the band's top
bits, so one pass holds at most ``max_rows`` rows; within a partition rows are sorted by
the band and each run of equal band values is compared pairwise by true Hamming distance.
Pairs within the threshold are joined in a union-find that holds only rows that matched.

Recall: two hashes within distance ``d`` share at least one whole band when ``d < bands``
(pigeonhole). With 4 bands of 16 bits and threshold 4, pairs exactly 4 apart are missed
only when their differing bits fall one per band (about 1 in 10 of them); ``bands: 5``
makes it complete, at about 8x the comparisons.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator

import numpy as np

CHUNK_ROWS = 1 << 16  # rows read from the spill file at a time (512 KiB)


class SpillFile:
    """Append-only uint64 hashes on local disk; row ``i`` is the ``i``-th appended."""

    def __init__(self, folder: str | None = None):
        handle, self.path = tempfile.mkstemp(suffix=".u64", dir=folder)
        self.file = os.fdopen(handle, "wb")
        self.rows = 0

    def append(self, hashes: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(hashes, np.uint64).tobytes())
        self.rows += len(hashes)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, hashes)`` a chunk at a time."""
        self.file.flush()
        with open(self.path, "rb") as f:
            for start in range(0, self.rows, CHUNK_ROWS):
                yield start, np.fromfile(f, np.uint64, min(CHUNK_ROWS, self.rows - start))

    def close(self) -> None:
        self.file.close()
        os.unlink(self.path)

    def __enter__(self) -> SpillFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class UnionFind:
    """Disjoint sets over the rows that matched something (a dict, not an array of all)."""

    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the lowest row leads its group
        self.parent.setdefault(min(ra, rb), min(ra, rb))

    def groups(self) -> dict[int, list[int]]:
        """``{lowest row: sorted rows}`` of every group of two or more."""
        out: dict[int, list[int]] = {}
        for x in list(self.parent):
            out.setdefault(self.find(x), []).append(x)
        return {k: sorted(v) for k, v in out.items() if len(v) > 1}


def band_slices(bands: int) -> list[tuple[int, int]]:
    """``(shift, bits)`` of each band: 64 bits split as evenly as they go."""
    widths = [64 // bands + (1 if i < 64 % bands else 0) for i in range(bands)]
    shifts = np.cumsum([0, *widths[:-1]])
    return [(int(s), w) for s, w in zip(shifts, widths)]


def near_pairs(spill: SpillFile, threshold: int, bands: int = 4, max_rows: int = 1 << 21,
               found: UnionFind | None = None) -> tuple[UnionFind, dict]:
    """Join every pair of rows within ``threshold`` bits that shares a band. Returns the
    union-find and stats (passes, the most rows held at once, candidates compared)."""
    found = found or UnionFind()
    stats = {"passes": 0, "max_rows_held": 0, "candidates": 0, "pairs": 0}
    for shift, bits in band_slices(bands):
        split_bits = min(bits, max(0, int(np.ceil(np.log2(max(spill.rows / max_rows, 1))))))
        for part in range(1 << split_bits):
            rows, hashes = _partition(spill, shift, bits, split_bits, part)
            stats["passes"] += 1
            stats["max_rows_held"] = max(stats["max_rows_held"], len(rows))
            _join_runs(rows, hashes, (hashes >> np.uint64(shift)) & _mask(bits), threshold,
                       found, stats)
    return found, stats


def _mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def _partition(spill: SpillFile, shift: int, bits: int, split_bits: int,
               part: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (and hashes) whose band's top ``split_bits`` bits equal ``part``."""
    rows, hashes = [], []
    for start, chunk in spill.chunks():
        band = (chunk >> np.uint64(shift)) & _mask(bits)
        keep = np.flatnonzero((band >> np.uint64(bits - split_bits)) == part) \
            if split_bits else np.arange(len(chunk))
        rows.append(keep + start)
        hashes.append(chunk[keep])
    return (np.concatenate(rows) if rows else np.zeros(0, np.int64),
            np.concatenate(hashes) if hashes else np.zeros(0, np.uint64))


def _join_runs(rows: np.ndarray, hashes: np.ndarray, band: np.ndarray, threshold: int,
               found: UnionFind, stats: dict) -> None:
    """Compare each row with the later rows of its run of equal band values."""
    order = np.argsort(band, kind="stable")
    band, hashes, rows = band[order], hashes[order], rows[order]
    starts = np.flatnonzero(band[:-1] == band[1:])  # positions whose run goes on
    k = 1
    while len(starts):
        stats["candidates"] += len(starts)
        close = np.bitwise_count(hashes[starts] ^ hashes[starts + k]) <= threshold
        for a, b in zip(rows[starts[close]], rows[starts[close] + k]):
            found.union(int(a), int(b))
        stats["pairs"] += int(close.sum())
        k += 1
        starts = starts[starts + k < len(band)]
        starts = starts[band[starts] == band[starts + k]]


def spill_all(chunks: Iterable[np.ndarray], folder: str | None = None) -> SpillFile:
    """A spill file holding every hash of ``chunks``, in order."""
    spill = SpillFile(folder)
    for chunk in chunks:
        spill.append(chunk)
    return spill
