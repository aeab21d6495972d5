"""``synthset report``: a run's markers and sample images, as one HTML page and a PNG sheet.

Everything is read through the output's OutputFolder (any fsspec URL, S3 included): the
markers give timings, counts and failure reasons; the first row groups of a few shards'
metadata give sample prompts; their images come from wherever the format keeps them
(``SSSSS/KEY.ext``, a member of ``SSSSS.tar``, or the ``image`` column of ``SSSSS.parquet``).
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import tarfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from pipeline.progress import JOB, committed_shards, read_status
from pipeline.storage import OutputFolder
from pipeline.writers import marker_name

log = logging.getLogger("synthset")
REPORT_HTML, REPORT_PNG = "report.html", "report.png"
SAMPLE_COUNT = 24  # images in the grid
SAMPLE_SHARDS = 6  # shards they are drawn from, spread over the run
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
    with ThreadPoolExecutor(16) as pool:  # one small GET per shard; don't do them serially
        markers = [m for m in pool.map(lambda n: folder.read_json(marker_name(n)), names) if m]
    data = RunData(status, folder.read_json(JOB) or {}, markers)
    data.samples = read_samples(folder, spread(names, SAMPLE_SHARDS), sample_count)
    return data


def spread(items: list, k: int) -> list:
    """Up to ``k`` items evenly spaced over ``items``, first and last included."""
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def read_samples(folder: OutputFolder, shard_names: list[str], count: int) -> list[Sample]:
    """About ``count`` successful samples, the same number from each of ``shard_names``."""
    if not shard_names:
        return []
    per_shard = math.ceil(count / len(shard_names))
    samples: list[Sample] = []
    for name in shard_names:
        rows = folder.call("reading", f"{name}.parquet",
                           lambda n=name: _first_successes(folder, n, per_shard))
        samples.extend(_with_images(folder, rows))
    return samples[:count]


def _first_successes(folder: OutputFolder, shard_name: str, limit: int) -> list[dict]:
    """The first ``limit`` successful rows of a shard's metadata, read a row group at a time."""
    with folder.open(f"{shard_name}.parquet") as f:
        meta = pq.ParquetFile(f)
        columns = [c for c in (*_COLUMNS, "image") if c in meta.schema_arrow.names]
        rows: list[dict] = []
        for group in range(meta.num_row_groups):
            table = meta.read_row_group(group, columns=columns)
            rows += [r for r in table.to_pylist() if r["status"] == "success"]
            if len(rows) >= limit:
                break
    return rows[:limit]


def _with_images(folder: OutputFolder, rows: list[dict]) -> list[Sample]:
    """Samples for ``rows``, their image bytes fetched from where the format put them."""
    inline = {r["key"]: (r.get("image") or {}).get("bytes") for r in rows}
    packed = [r for r in rows if not inline[r["key"]] and ".tar/" in (r["file"] or "")]
    from_tars = _tar_members(folder, packed)
    samples = []
    for r in rows:
        data = inline[r["key"]] or from_tars.get(r["file"])
        if data is None and r["file"] and ".tar/" not in r["file"]:
            data = folder.read_bytes(r["file"])
        if data:
            samples.append(Sample(r["key"], r["prompt"] or "", data))
    return samples


def _tar_members(folder: OutputFolder, rows: list[dict]) -> dict[str, bytes]:
    """``{file: bytes}`` for files named ``SSSSS.tar/MEMBER``, streaming each tar once."""
    wanted: dict[str, set[str]] = {}
    for r in rows:
        tar_name, member = r["file"].split("/", 1)
        wanted.setdefault(tar_name, set()).add(member)
    found: dict[str, bytes] = {}
    for tar_name, members in wanted.items():
        found.update(folder.call("reading", tar_name,
                                 lambda t=tar_name, m=members: _read_members(folder, t, m)))
    return found


def _read_members(folder: OutputFolder, tar_name: str, members: set[str]) -> dict[str, bytes]:
    found = {}
    with folder.open(tar_name) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for info in tar:  # members are in key order: the first samples come early
            if info.name in members:
                found[f"{tar_name}/{info.name}"] = tar.extractfile(info).read()
                if len(found) == len(members):
                    break
    return found


def report_targets(folder: OutputFolder, out: str | None,
                   storage_options: dict | None) -> tuple[OutputFolder, str, str]:
    """Where the page and the sheet go: the output itself, or ``out`` and ``out``'s .png."""
    if not out:
        return folder, REPORT_HTML, REPORT_PNG
    remote = "://" in out and not out.startswith("file://")
    parent, base = posixpath.split(out) if remote else os.path.split(os.path.abspath(out))
    stem = base[:-5] if base.endswith(".html") else base
    return OutputFolder(parent, storage_options if remote else None), base, f"{stem}.png"


def write_report(folder: OutputFolder, out: str | None = None,
                 storage_options: dict | None = None) -> tuple[str, str]:
    """Write the HTML page and the PNG contact sheet; returns where they went."""
    from pipeline.report_render import contact_sheet, render_html

    data = collect(folder)
    target, html_name, png_name = report_targets(folder, out, storage_options)
    target.write_bytes(html_name, render_html(data).encode())
    target.write_bytes(png_name, contact_sheet(data))
    log.info("report of %s: %d shards, %d samples", folder.display(), len(data.markers),
             len(data.samples))
    return target.display(html_name), target.display(png_name)
