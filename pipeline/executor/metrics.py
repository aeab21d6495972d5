"""Prometheus metrics of a running job, through ``ray.util.metrics``.

Each node's Ray metrics agent serves them at ``http://NODE:METRICS_EXPORT_PORT/metrics``
with a ``ray_`` prefix (counters also get ``_total``), so the Ray dashboard's Grafana and
any Prometheus that scrapes a Ray cluster see them. They are recorded on the driver from
what the executor already receives (per-batch counts from the progress sink, each shard's
marker): a killed or preempted actor cannot take unexported samples with it.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger("synthset")
SECONDS = [0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]
JOB_TAG = "job_name"  # not "job": Prometheus sets that label to the scrape job's name


@functools.cache
def _instruments() -> dict:
    """Created once per process: every executor of a process records into the same series."""
    from ray.util.metrics import Counter, Gauge, Histogram

    tags = (JOB_TAG,)
    return {
        "images_generated": Counter("synthset_images_generated",
                                    "images generated and sent to storage", tags),
        "images_failed": Counter("synthset_images_failed",
                                 "requested images recorded with status=error", tags),
        "shards_committed": Counter("synthset_shards_committed",
                                    "shards whose marker was written in this run", tags),
        "shards_failed": Counter("synthset_shards_failed",
                                 "shards given up on after runtime.max_shard_attempts", tags),
        "storage_retries": Counter("synthset_storage_retries",
                                   "storage calls retried in committed shards", tags),
        "shards_in_flight": Gauge("synthset_shards_in_flight",
                                  "shards submitted to actors and not yet finished", tags),
        "stage_seconds": Histogram("synthset_stage_seconds",
                                   "seconds one shard spent in a stage", SECONDS,
                                   (JOB_TAG, "stage")),
        "shard_seconds": Histogram("synthset_shard_seconds",
                                   "wall-clock seconds of one committed shard", SECONDS, tags),
    }


class JobMetrics:
    """Records one job's metrics; a no-op (after one warning) where Ray cannot take them."""

    def __init__(self, job_name: str) -> None:
        self.tags = {JOB_TAG: job_name}
        self.m = self._guard(_instruments)

    def images(self, done: int, failed: int) -> None:
        self._inc("images_generated", done)
        self._inc("images_failed", failed)

    def shard_committed(self, stats: dict) -> None:
        self._inc("shards_committed", 1)
        self._inc("storage_retries", stats.get("retries") or 0)
        for stage, seconds in (stats.get("stage_seconds") or {}).items():
            self._record("stage_seconds", "observe", seconds, stage=stage)
        if stats.get("duration_s") is not None:
            self._record("shard_seconds", "observe", stats["duration_s"])

    def shard_failed(self) -> None:
        self._inc("shards_failed", 1)

    def shards_in_flight(self, count: int) -> None:
        # Set on every executor step: the agent drops a gauge not refreshed for two exports.
        self._record("shards_in_flight", "set", count)

    def _inc(self, name: str, value: float) -> None:
        if value > 0:  # Ray's Counter.inc rejects 0
            self._record(name, "inc", value)

    def _record(self, name: str, method: str, value: float, **tags: str) -> None:
        if self.m is not None:
            self._guard(lambda: getattr(self.m[name], method)(value, {**self.tags, **tags}))

    def _guard(self, fn):
        try:
            return fn()
        except Exception as e:  # metrics are advisory: never fail a job over them
            log.warning("Prometheus metrics are off for this run: %s", e)
            self.m = None
            return None


class MeteredProgress:
    """The driver's Progress, also recording every update as metrics.

    The executor calls it exactly as it calls Progress; ``in_flight`` is the one addition.
    """

    def __init__(self, progress, job_name: str) -> None:
        self.progress = progress
        self.metrics = JobMetrics(job_name)

    def images(self, done: int, failed: int) -> None:
        self.metrics.images(done, failed)
        self.progress.images(done, failed)

    def shard_done(self, stats: dict) -> None:
        self.metrics.shard_committed(stats)
        self.progress.shard_done(stats)

    def shard_failed(self, shard_id: int) -> None:
        self.metrics.shard_failed()
        self.progress.shard_failed(shard_id)

    def in_flight(self, count: int) -> None:
        self.metrics.shards_in_flight(count)

    def __getattr__(self, name: str):
        return getattr(self.progress, name)
