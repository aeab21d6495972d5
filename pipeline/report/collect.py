"""What a run report shows, read back from an output: status, markers, sample images.

Everything is read through the output's OutputFolder (any fsspec URL, S3 included): the
markers give timings, counts and failure reasons; the first row groups of a few shards'
metadata give sample prompts; the output's format reads their images back
(``ShardWriter.read_images``), wherever it keeps them.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from pipeline.output.formats import get_format
from pipeline.output.layout import JOB, metadata_name
from pipeline.output.manifest import read_markers
from pipeline.output.progress import committed_shards, read_status
from pipeline.output.storage import OutputFolder

log = logging.getLogger("synthset")
SAMPLE_COUNT = 24  # images in the grid
SAMPLE_SHARDS = 6  # shards they are drawn from, spread over the run
PROMPT_ROWS = 4  # prompts shown with every image drawn for them (images_per_prompt > 1)
_COLUMNS = ("key", "prompt", "status", "file")


@dataclass
class Sample:
    """One generated image: its key, prompt and encoded bytes as stored."""

    key: str
    prompt: str
    data: bytes


@dataclass
class RunData:
    """What a report shows: status, job spec, every committed marker, sample images."""

    status: dict[str, Any]
    job: dict[str, Any]
    markers: list[dict[str, Any]]
    samples: list[Sample] = field(default_factory=list)
    quality: Any = None  # report.quality.QualityData (collect_quality), for scored jobs
    prompt_rows: list[list[Sample]] = field(default_factory=list)  # one prompt's seeds each

    def failures(self) -> Counter:
        """Failed images by reason, summed over shards (each marker keeps its top 20)."""
        total: Counter = Counter()
        for m in self.markers:
            total.update(m.get("error_counts") or {})
        return total

    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage summed over shards, largest first."""
        total: Counter = Counter()
        for m in self.markers:
            total.update(m.get("stage_seconds") or {})
        return dict(total.most_common())


def collect(folder: OutputFolder, sample_count: int = SAMPLE_COUNT) -> RunData:
    """Read status, ``_job.json``, every marker and a spread of sample images."""
    status = read_status(folder)
    names = sorted(committed_shards(folder))
    markers = [m for m in read_markers(folder, names) if m]  # full markers: timings, errors
    data = RunData(status, folder.read_json(JOB) or {}, markers)
    writer = get_format(data.job["spec"]["output"]["format"]) if data.job else None
    data.samples = read_samples(folder, writer, spread(names, SAMPLE_SHARDS), sample_count)
    per_prompt = data.job.get("spec", {}).get("generation", {}).get("images_per_prompt", 1)
    if names and per_prompt > 1:
        rows = folder.call("reading", metadata_name(names[0]),
                           lambda: _first_prompts(folder, names[0], PROMPT_ROWS))
        data.prompt_rows = [s for s in (_with_images(folder, writer, names[0], r) for r in rows)
                            if s]
    return data


def spread(items: list, k: int) -> list:
    """Up to ``k`` items evenly spaced over ``items``, first and last included."""
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def read_samples(folder: OutputFolder, writer, shard_names: list[str],
                 count: int) -> list[Sample]:
    """About ``count`` successful samples, the same number from each of ``shard_names``."""
    if not shard_names:
        return []
    per_shard = math.ceil(count / len(shard_names))
    samples: list[Sample] = []
    for name in shard_names:
        rows = folder.call("reading", metadata_name(name),
                           lambda n=name: _first_successes(folder, n, per_shard))
        samples.extend(_with_images(folder, writer, name, rows))
    return samples[:count]


def _first_successes(folder: OutputFolder, shard_name: str, limit: int) -> list[dict]:
    """The first ``limit`` successful rows of a shard's metadata, read a row group at a time."""
    with folder.open(metadata_name(shard_name)) as f:
        meta = pq.ParquetFile(f)
        columns = [c for c in _COLUMNS if c in meta.schema_arrow.names]
        rows: list[dict] = []
        for group in range(meta.num_row_groups):
            table = meta.read_row_group(group, columns=columns)
            rows += [r for r in table.to_pylist() if r["status"] == "success"]
            if len(rows) >= limit:
                break
    return rows[:limit]


def _first_prompts(folder: OutputFolder, shard_name: str, count: int) -> list[list[dict]]:
    """The successful rows of a shard's first ``count`` prompts, grouped by prompt row id:
    one group is what a prompt drew across its seeds (``image_index`` 0, 1, ...)."""
    groups: dict[str, list[dict]] = {}
    with folder.open(metadata_name(shard_name)) as f:
        meta = pq.ParquetFile(f)
        columns = [c for c in (*_COLUMNS, "id") if c in meta.schema_arrow.names]
        for group in range(meta.num_row_groups):
            for row in meta.read_row_group(group, columns=columns).to_pylist():
                groups.setdefault(row.get("id") or row["prompt"], []).append(row)
            if len(groups) > count:  # the first ``count`` groups are complete
                break
    return [[r for r in rows if r["status"] == "success"]
            for rows in list(groups.values())[:count]]


def _with_images(folder: OutputFolder, writer, shard_name: str,
                 rows: list[dict]) -> list[Sample]:
    """Samples for ``rows``, their image bytes read back by the output's format."""
    images = writer.read_images(folder, shard_name, rows)
    return [Sample(r["key"], r["prompt"] or "", images[r["key"]])
            for r in rows if images.get(r["key"])]
