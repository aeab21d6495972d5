"""Near-duplicate pairs among many 64-bit hashes in bounded memory: LSH bands, verified.

The hashes live in a spill file on local disk (8 bytes each), never all in memory. For
each band (a slice of the 64 bits) the rows are split into partitions by the band's top
bits, so one pass holds at most ``max_rows`` rows; within a partition rows are sorted by
the band and each run of equal band values is compared pairwise by true Hamming distance.
Pairs within the threshold are joined in a union-find that holds only rows that matched.
A second signature per row (its own spill file, read alongside) may confirm each candidate
pair before it is joined: near-duplicates are then pairs close in both.

Recall: two hashes within distance ``d`` share at least one whole band when ``d < bands``
(pigeonhole). With 4 bands of 16 bits and threshold 4, pairs exactly 4 apart are missed
only when their differing bits fall one per band (about 1 in 10 of them); ``bands: 5``
makes it complete, at about 8x the comparisons.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator

import numpy as np

CHUNK_ROWS = 1 << 16  # rows read from the spill file at a time (512 KiB)
# (values of row a, values of row b) -> whether each pair agrees: a second signature's check
Agree = Callable[[np.ndarray, np.ndarray], np.ndarray]


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
               found: UnionFind | None = None, confirm: SpillFile | None = None,
               agree: Agree | None = None) -> tuple[UnionFind, dict]:
    """Join every pair of rows within ``threshold`` bits that shares a band and, with
    ``confirm``, whose rows there ``agree`` (a second signature per row, read alongside).
    Returns the union-find and stats (passes, the most rows held at once, candidates
    compared, pairs joined, candidates the confirmation refused)."""
    found = found or UnionFind()
    stats = {"passes": 0, "max_rows_held": 0, "candidates": 0, "pairs": 0, "refused": 0}
    for shift, bits in band_slices(bands):
        split_bits = min(bits, max(0, int(np.ceil(np.log2(max(spill.rows / max_rows, 1))))))
        for part in range(1 << split_bits):
            rows, hashes, second = _partition(spill, shift, bits, split_bits, part, confirm)
            stats["passes"] += 1
            stats["max_rows_held"] = max(stats["max_rows_held"], len(rows))
            band = (hashes >> np.uint64(shift)) & _mask(bits)
            _join_runs(rows, hashes, band, threshold, found, stats, second, agree)
    return found, stats


def _mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def _partition(spill: SpillFile, shift: int, bits: int, split_bits: int, part: int,
               confirm: SpillFile | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows, hashes (and confirm values) whose band's top ``split_bits`` bits equal ``part``."""
    rows, hashes, second = [], [], []
    seconds = confirm.chunks() if confirm is not None else None
    for start, chunk in spill.chunks():
        band = (chunk >> np.uint64(shift)) & _mask(bits)
        keep = np.flatnonzero((band >> np.uint64(bits - split_bits)) == part) \
            if split_bits else np.arange(len(chunk))
        rows.append(keep + start)
        hashes.append(chunk[keep])
        if seconds is not None:
            second.append(next(seconds)[1][keep])  # same chunking: row for row
    return (_join(rows, np.int64), _join(hashes, np.uint64),
            _join(second, np.uint64) if confirm is not None else None)


def _join(parts: list[np.ndarray], kind) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, kind)


def _join_runs(rows: np.ndarray, hashes: np.ndarray, band: np.ndarray, threshold: int,
               found: UnionFind, stats: dict, second: np.ndarray | None = None,
               agree: Agree | None = None) -> None:
    """Compare each row with the later rows of its run of equal band values."""
    order = np.argsort(band, kind="stable")
    band, hashes, rows = band[order], hashes[order], rows[order]
    second = second[order] if second is not None else None
    starts = np.flatnonzero(band[:-1] == band[1:])  # positions whose run goes on
    k = 1
    while len(starts):
        stats["candidates"] += len(starts)
        close = np.bitwise_count(hashes[starts] ^ hashes[starts + k]) <= threshold
        if second is not None:
            confirmed = close & agree(second[starts], second[starts + k])
            stats["refused"] += int(close.sum() - confirmed.sum())
            close = confirmed
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
