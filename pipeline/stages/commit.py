"""Stage 6, commit: the shard's metadata table and stats, then the writer's commit.

The commit runs on the worker's commit thread, overlapping the next shard's generation:
it waits for the shard's last stores, builds ``SSSSS.parquet`` (one row per requested
image, failures included, input columns passed through) and hands it with the stats to
the writer, which uploads the data objects and creates the marker last.
"""

from __future__ import annotations

import resource
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field

import pyarrow as pa

from models.base import GenerationParams
from pipeline.input.shards import Shard, split_rejected_key
from pipeline.output.formats.base import STORED, ShardWriter
from pipeline.output.storage import OutputFolder
from pipeline.spec import JobSpec
from pipeline.stages.quality_columns import mark_sample_fields, quality_columns, quality_stats
from pipeline.stages.samples import Sample, utf8_safe
from pipeline.stages.store import StorePool


@dataclass
class ShardRun:
    """One shard between generation and commit: what the commit thread needs."""

    shard: Shard
    shard_name: str
    table: pa.Table
    samples: list[Sample]
    writer: ShardWriter
    folder: OutputFolder  # scoped: this shard's own retry count
    started: float
    timings: Counter = field(default_factory=Counter)
    pending: list[tuple[list[Sample], Future]] = field(default_factory=list)
    actor: dict = field(default_factory=dict)  # who drew it: pid, node, store threads
    rejected: list[Sample] = field(default_factory=list)  # stored rejected draws (their rows)


def commit_shard(run: ShardRun, spec: JobSpec, params: GenerationParams, model_id: str,
                 cache_stats: dict) -> dict:
    """Wait for the shard's stores, write its metadata, data objects and marker."""
    t = time.perf_counter()
    for chunk, future in run.pending:
        run.timings["image_encode_and_upload"] += StorePool.settle(chunk, future)
    run.timings["wait_for_uploads"] += time.perf_counter() - t
    t = time.perf_counter()
    rejected = sorted(run.rejected, key=lambda s: split_rejected_key(s.key))  # batch-free order
    metadata = metadata_table(spec, params, model_id, run.table, run.samples + rejected)
    # timed before shard_stats so it reaches the marker; commit's uploads are in "uploads"
    run.timings["metadata"] += time.perf_counter() - t
    stats = shard_stats(run, cache_stats)
    if spec.quality.scorers or spec.quality.accept:
        stats["quality"] = quality_stats(spec.quality, run.samples, rejected)
    return run.writer.commit(metadata, stats)


def shard_stats(run: ShardRun, cache_stats: dict) -> dict:
    """The marker's content, before the writer adds its objects and uploads."""
    samples, shard = run.samples, run.shard
    errors = Counter(s.error_message for s in samples if s.status == "error")
    return {
        "shard": shard.id, "shard_name": run.shard_name,
        "rows": shard.num_rows, "count": len(samples),
        "successes": sum(s.status == "success" for s in samples),
        "failed": sum(s.status == "error" for s in samples),
        "error_counts": dict(errors.most_common(20)),
        "truncated": sum(s.truncated for s in samples),
        **({} if shard.retry_keys is None else {"retried": len(shard.retry_keys)}),
        "retries": run.folder.retry_count,
        "embedding_cache": cache_stats,
        "start_time": run.started, "end_time": time.time(),
        "duration_s": round(time.time() - run.started, 3),
        "stage_seconds": {k: round(v, 3) for k, v in run.timings.items()},
        "actor": run.actor,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def metadata_table(spec: JobSpec, p: GenerationParams, model_id: str, table: pa.Table,
                   samples: list[Sample]) -> pa.Table:
    """``SSSSS.parquet``: one row per requested image (then one per stored rejected draw),
    then the unused input columns."""
    ok = [s.status in STORED for s in samples]
    columns = {
        "key": [s.key for s in samples], "id": [s.id for s in samples],
        "prompt": [s.prompt for s in samples],
        "negative_prompt": pa.array([s.negative_prompt for s in samples], pa.string()),
        "seed": pa.array([s.seed for s in samples], pa.int64()),
        "image_index": pa.array([s.image_index for s in samples], pa.int32()),
        "status": [s.status for s in samples],
        "error_message": pa.array([s.error_message for s in samples], pa.string()),
        "width": pa.array([p.width if k else None for k in ok], pa.int32()),
        "height": pa.array([p.height if k else None for k in ok], pa.int32()),
        "sha256": pa.array([s.sha256 for s in samples], pa.string()),
        "file": pa.array([s.file for s in samples], pa.string()),
        "truncated": [s.truncated for s in samples],
        "model": [model_id] * len(samples),
        "model_family": [spec.model.family] * len(samples),
        "steps": pa.array([p.steps] * len(samples), pa.int32()),
        "guidance_scale": pa.array([p.guidance_scale] * len(samples), pa.float32()),
    }
    scores = quality_columns(spec.quality, spec.generation.images_per_prompt, samples)
    columns.update(scores)
    used = {spec.input.prompt_column, spec.input.id_column, spec.input.seed_column,
            spec.input.negative_prompt_column}
    rows = pa.array([s.row for s in samples], pa.int64())
    for name in table.column_names:
        if name not in used:
            out = name if name not in columns else f"input_{name}"
            columns[out] = utf8_safe(table.column(name).take(rows))
    return mark_sample_fields(pa.table(columns), scores) if scores else pa.table(columns)
