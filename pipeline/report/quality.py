"""What the report's quality sections show, read back from an output.

Score columns come from the metadata of up to ``QUALITY_SHARDS`` shards spread over the
run (numbers only, a few columns); the lowest-scoring samples and the first duplicate
groups of ``_duplicates.pq`` come with their images, read through the format.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from models.scenes import ATTRIBUTES
from pipeline.output.formats import get_format
from pipeline.output.layout import DUPLICATES, SUCCESS, metadata_name
from pipeline.output.storage import OutputFolder
from pipeline.report.collect import RunData, Sample, spread
from pipeline.stages.scorers import SCORERS, columns_of

QUALITY_SHARDS = 64  # shards whose score columns the histograms are drawn from
LOWEST, GROUPS, GROUP_SIZE, PROMPTS = 8, 6, 4, 10
RANKED = ("clip_score", "scene_match")  # what "lowest-scoring" ranks by, in this order
_EXTRA = ("key", "prompt", "status", "file", "id", "scene_failed", "variety", "vendi",
          "accepted", "attempt")


@dataclass
class QualityData:
    """The quality sections' content; empty when the job ran no scorers."""

    summary: dict
    shards_read: int = 0
    scores: dict[str, list[float]] = field(default_factory=dict)
    lowest: list[tuple[Sample, str]] = field(default_factory=list)
    duplicates: list[list[Sample]] = field(default_factory=list)
    variety: list[tuple[str, float | None, float | None]] = field(default_factory=list)
    labels: dict[str, tuple[int, int]] = field(default_factory=dict)  # attr: (right, of)


def collect_quality(folder: OutputFolder, run: RunData) -> QualityData | None:
    """The quality sections of a report, or None for a job without scorers."""
    writer = get_format(run.job["spec"]["output"]["format"]) if run.job else None
    names = [m["shard_name"] for m in run.markers]
    summary = (folder.read_json(SUCCESS) or {}).get("quality")
    read = spread(names, QUALITY_SHARDS)
    rows = {name: _rows(folder, name) for name in read}
    if not summary and not any("phash" in r or "scene_match" in r or "clip_score" in r
                               for shard in rows.values() for r in shard[:1]):
        return None
    data = QualityData(summary or {}, len(read))
    done = [(n, r) for n, shard in rows.items() for r in shard if r["status"] == "success"]
    scorers = ((run.job.get("spec") or {}).get("quality") or {}).get("scorers") or []
    numeric = [c for c, kind in columns_of([s for s in scorers if s in SCORERS]).items()
               if pa.types.is_floating(kind)]  # every score column of numbers: a histogram
    data.scores = {c: [r[c] for _, r in done if r.get(c) is not None] for c in numeric}
    data.scores = {c: v for c, v in data.scores.items() if v}
    data.lowest = _lowest(folder, writer, done, data.scores)
    data.variety = _variety(done)
    data.labels = _labels(done)
    if writer is not None and folder.exists(DUPLICATES):
        data.duplicates = _duplicate_groups(folder, writer, len(names[0]) if names else 5)
    return data


def _rows(folder: OutputFolder, name: str) -> list[dict]:
    def read() -> list[dict]:
        with folder.open(metadata_name(name)) as f:
            meta = pq.ParquetFile(f)
            numbers = [f.name for f in meta.schema_arrow
                       if pa.types.is_floating(f.type) or pa.types.is_integer(f.type)]
            columns = [c for c in dict.fromkeys((*_EXTRA, *numbers))
                       if c in meta.schema_arrow.names]
            return meta.read(columns=columns).to_pylist()
    return folder.call("reading", metadata_name(name), read)


def _lowest(folder, writer, done, scores) -> list[tuple[Sample, str]]:
    if not scores or writer is None:
        return []
    column = next((c for c in RANKED if c in scores), None)
    if column is None:
        return []
    ranked = sorted(((r[column], n, r) for n, r in done if r.get(column) is not None),
                    key=lambda t: (t[0], t[2]["key"]))[:LOWEST]
    images = _images(folder, writer, [(n, r) for _, n, r in ranked])
    out = []
    for value, _, r in ranked:
        if r["key"] in images:
            failed = r.get("scene_failed")
            note = f"{column} {value:.3f}" + (f"; wrong: {', '.join(failed)}" if failed else "")
            out.append((Sample(r["key"], r["prompt"] or "", images[r["key"]]), note))
    return out


def _images(folder, writer, rows: list[tuple[str, dict]]) -> dict[str, bytes]:
    by_shard: dict[str, list[dict]] = defaultdict(list)
    for name, r in rows:
        by_shard[name].append(r)
    images: dict[str, bytes] = {}
    for name, shard_rows in sorted(by_shard.items()):
        images.update(writer.read_images(folder, name, sorted(shard_rows, key=lambda r: r["key"])))
    return images


def _variety(done) -> list[tuple[str, float | None, float | None]]:
    """(prompt, mean phash distance, Vendi score) per prompt, the least varied first."""
    per_prompt = {r["id"]: (r["prompt"], r.get("variety"), r.get("vendi")) for _, r in done
                  if r.get("variety") is not None or r.get("vendi") is not None}
    return sorted(per_prompt.values(), key=lambda p: (p[1] if p[1] is not None else p[2]))


def _labels(done) -> dict[str, tuple[int, int]]:
    scored = [r["scene_failed"] for _, r in done if r.get("scene_failed") is not None]
    wrong = Counter(a for failed in scored for a in failed)
    return {a: (len(scored) - wrong[a], len(scored)) for a in ATTRIBUTES} if scored else {}


def _duplicate_groups(folder, writer, shard_digits: int) -> list[list[Sample]]:
    with folder.open(DUPLICATES) as f:
        table = pq.read_table(f)
    groups: dict[int, list[str]] = defaultdict(list)
    for r in table.to_pylist():
        if len(groups) < GROUPS or r["group"] in groups:
            groups[r["group"]].append(r["key"])
    wanted = {k for keys in groups.values() for k in keys[:GROUP_SIZE]}
    rows = [(name, r) for name in sorted({k[:shard_digits] for k in wanted})
            for r in _rows(folder, name) if r["key"] in wanted]
    images = _images(folder, writer, rows)
    prompts = {r["key"]: r["prompt"] or "" for _, r in rows}
    return [[Sample(k, prompts[k], images[k]) for k in keys[:GROUP_SIZE] if k in images]
            for _, keys in sorted(groups.items())]
