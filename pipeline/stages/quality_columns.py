"""The quality stage's part of a shard's commit: typed score columns, per-prompt variety,
and the counts a marker carries.

Score columns carry the field metadata ``SAMPLE_FIELD``, which tells the WebDataset writer
to put them in each sample's JSON too (the HF-Parquet writer keeps every column).
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations

import numpy as np
import pyarrow as pa

from pipeline.output.formats.base import REJECTED, SAMPLE_FIELD, STORED
from pipeline.stages.samples import Sample
from pipeline.stages.scorers import ACCEPT_COLUMNS, columns_of
from pipeline.stages.scorers.base import EMBEDDING


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes of equal length."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def variety(samples: list[Sample]) -> dict[int, float]:
    """Per input row (prompt) with two or more hashed images: mean pairwise phash distance
    in bits (0 = all alike; two unrelated images are ~32 apart)."""
    hashes: dict[int, list[str]] = defaultdict(list)
    for s in samples:
        if s.status == "success" and s.scores.get("phash"):
            hashes[s.row].append(s.scores["phash"])
    return {row: sum(hamming(a, b) for a, b in combinations(h, 2)) / (len(h) * (len(h) - 1) / 2)
            for row, h in hashes.items() if len(h) > 1}


def vendi(samples: list[Sample]) -> dict[int, float]:
    """Per input row with two or more CLIP-scored images: the Vendi score, the effective
    number of distinct images, exp(-sum l log l) over the eigenvalues l of K / n where K is
    the cosine-similarity matrix of their embeddings (1 = all alike, n = all different)."""
    found: dict[int, list] = defaultdict(list)
    for s in samples:
        if s.status == "success" and s.scores.get(EMBEDDING) is not None:
            found[s.row].append(s.scores[EMBEDDING])
    out = {}
    for row, vectors in found.items():
        if len(vectors) > 1:
            e = np.stack(vectors).astype(np.float64)  # (n, d), unit rows
            eigen = np.linalg.eigvalsh(e @ e.T / len(e))
            eigen = eigen[eigen > 1e-12]
            out[row] = float(np.exp(-(eigen * np.log(eigen)).sum()))
    return out


def quality_columns(quality, images_per_prompt: int, samples: list[Sample]) -> dict:
    """``{name: array}`` of the job's score columns (null for failed samples). With
    ``keep_rejected``, ``kept`` tells a sample's image (True) from a stored rejected draw."""
    ok = [s.status in STORED for s in samples]
    columns = {name: pa.array([s.scores.get(name) if k else None for s, k in zip(samples, ok)],
                              kind) for name, kind in columns_of(quality.scorers).items()}
    if quality.accept:
        columns["attempt"] = pa.array([s.attempt if k else None for s, k in zip(samples, ok)],
                                      ACCEPT_COLUMNS["attempt"])
        columns["accepted"] = pa.array([s.accepted if k else None for s, k in zip(samples, ok)],
                                       ACCEPT_COLUMNS["accepted"])
    if quality.keep_rejected:
        columns["kept"] = pa.array([s.kept if k else None for s, k in zip(samples, ok)],
                                   ACCEPT_COLUMNS["kept"])
    if "phash" in quality.scorers and images_per_prompt > 1:
        rows = variety(samples)
        columns["variety"] = pa.array([rows.get(s.row) for s in samples], pa.float32())
    if "clip" in quality.scorers and images_per_prompt > 1:
        rows = vendi(samples)
        columns["vendi"] = pa.array([rows.get(s.row) for s in samples], pa.float32())
    return columns


def mark_sample_fields(table: pa.Table, names) -> pa.Table:
    """``table`` with ``names`` flagged as per-sample fields in its schema."""
    names = set(names)
    schema = pa.schema([f.with_metadata(SAMPLE_FIELD) if f.name in names else f
                        for f in table.schema], metadata=table.schema.metadata)
    return pa.Table.from_arrays(table.columns, schema=schema)


def quality_stats(quality, samples: list[Sample], rejected: list[Sample] = ()) -> dict:
    """The marker's ``quality`` counts; summed over markers into ``_SUCCESS``.
    ``rejected``: the stored rejected draws (``keep_rejected``)."""
    done = [s for s in samples if s.status == "success"]
    rows = variety(samples) if "phash" in quality.scorers else {}
    stats = {"scored": sum(bool(s.scores) for s in done), "draws": sum(s.draws for s in done),
             "variety_sum": round(sum(rows.values()), 4), "variety_prompts": len(rows)}
    if "clip" in quality.scorers:
        rows = vendi(samples)
        stats.update(vendi_sum=round(sum(rows.values()), 4), vendi_prompts=len(rows))
    if quality.accept:
        stats["accepted"] = sum(s.accepted is True for s in done)
        stats["not_accepted"] = sum(s.accepted is False for s in done)
    if quality.keep_rejected:
        stats["rejected_stored"] = sum(s.status == REJECTED for s in rejected)
    return stats
