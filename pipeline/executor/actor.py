"""What runs inside the Ray workers: the generation actor, and the progress sink it reports to.

``GenerationActor`` holds one loaded model and a ``ShardWorker``; ``generate(shard)``
draws a shard and starts its commit in the background, ``commit(shard_id)`` returns the
marker. ``ProgressSink`` (one per job, no CPU) takes per-batch counts and heartbeats
from every actor, and hands each actor its place on its node (which splits the node's
CPUs between the actors there).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from pipeline.input.shards import KeyFormat, Shard
from pipeline.spec import JobSpec

log = logging.getLogger("synthset")


@ray.remote
class ProgressSink:
    """Per-batch counts and heartbeats from actors: the bar moves within shards, stalls show."""

    def __init__(self) -> None:
        self.done = self.failed = 0
        self.seen: dict[int, float] = {}
        self.placed: dict[int, tuple[str, int]] = {}  # slot -> (node, index on that node)

    def place(self, slot: int, node: str) -> int:
        """The lowest index on ``node`` that no live actor holds: an actor's place among its
        node's actors, which decides its share of a fractional CPU split."""
        taken = {i for n, i in self.placed.values() if n == node}
        self.placed[slot] = (node, min(set(range(len(taken) + 1)) - taken))
        return self.placed[slot][1]

    def leave(self, slot: int) -> None:
        self.placed.pop(slot, None)

    def report(self, slot: int, done: int, failed: int) -> None:
        self.done += done
        self.failed += failed
        self.seen[slot] = time.time()

    def take(self) -> tuple[int, int, dict[int, float]]:
        counts = (self.done, self.failed, dict(self.seen))
        self.done = self.failed = 0
        return counts


class _Reporter:
    """Counts per batch, sent to the sink at most every ``interval_s`` (and at shard end):
    a remote call per batch took a quarter of the generating thread in the null regime."""

    def __init__(self, sink, slot: int, interval_s: float) -> None:
        self.sink, self.slot, self.interval_s = sink, slot, interval_s
        self.done = self.failed = 0
        self.sent = 0.0

    def __call__(self, done: int, failed: int) -> None:
        self.done, self.failed = self.done + done, self.failed + failed
        if time.monotonic() - self.sent >= self.interval_s:
            self._send()

    def flush(self) -> None:
        if self.done or self.failed:
            self._send()

    def _send(self) -> None:
        self.sink.report.remote(self.slot, self.done, self.failed)
        self.done = self.failed = 0
        self.sent = time.monotonic()


class GenerationActor:
    """Holds one loaded model and a ShardWorker; ``generate`` then ``commit`` run a shard."""

    def __init__(self, spec_json: str, keys: KeyFormat, cpus: float, sink, slot: int) -> None:
        # No loading bars in actor logs. Through the environment, read when huggingface_hub
        # is first imported, rather than transformers' switch: importing transformers costs
        # an actor ~1 s of CPU at start, and families like ``null`` never need it.
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        import torch

        from models.registry import load_model, resolve_device
        from pipeline.output.storage import OutputFolder
        from pipeline.stages.store import store_threads
        from pipeline.stages.worker import ShardWorker

        torch.set_num_threads(max(1, int(cpus)))
        self.spec = JobSpec.model_validate_json(spec_json)
        self.device = resolve_device()
        m = self.spec.model
        model = load_model(m.family, m.path, m.encoder, self.device, m.dtype, m.scheduler,
                           m.trust_remote_code, m.options, m.factory)
        folder = OutputFolder(self.spec.output.path, self.spec.storage_options,
                              self.spec.output.retries, self.spec.output.retry_backoff_s)
        deterministic = self.spec.runtime.deterministic
        if deterministic == "auto":
            deterministic = self.device == "cpu"
        # The store threads come from this actor's share of its node's CPUs (what Ray
        # reserved for it) and its place among the node's actors, so that the actors on a
        # node together encode on its cores and no more (os.cpu_count() would give each
        # actor the whole node).
        node = ray.get_runtime_context().get_node_id()
        index = _place(sink, slot, node)
        threads = store_threads(self.spec.output.format, cpus,
                                self.device == "cpu" and getattr(model, "cpu_bound", True),
                                index)
        self.worker = ShardWorker(self.spec, model, keys, folder, deterministic, threads,
                                  overlap_encoding=self.device != "cpu", device=self.device)
        self.worker.placement = {"node": node, "index": index, "cpus": cpus}
        self.report = _Reporter(sink, slot, min(0.25, self.spec.runtime.progress_interval_s))
        self.commits: dict[int, Future] = {}

    def ready(self) -> dict:
        return {"device": self.device, "pid": os.getpid(), **self.worker.placement,
                "store_threads": self.worker.store.threads}

    def generate(self, shard: Shard, upcoming: Shard | None = None) -> None:
        """Generate a shard; its commit goes on in the background until ``commit``.
        ``upcoming`` (the shard this actor gets next) is read while this one generates."""
        try:
            committing = self.worker.start(shard, self.report, upcoming)
        finally:
            try:
                self.report.flush()
            except Exception as e:  # progress is advisory; the shard's outcome is not
                log.warning("progress report lost: %s", e)
        self.commits[shard.id] = committing

    def commit(self, shard_id: int) -> dict:
        """Wait for a generated shard's commit; returns its marker (or raises its error)."""
        return self.commits.pop(shard_id).result()


def _place(sink, slot: int, node: str) -> int:
    """This actor's place on its node, from the progress sink; if the sink is gone (its node
    was lost), the slot number stands in: the split is then only approximately even."""
    try:
        return ray.get(sink.place.remote(slot, node), timeout=60)
    except (GetTimeoutError, RayActorError) as e:
        log.warning("actor %d: no place from the progress sink (%s); using its slot", slot,
                    type(e).__name__)
        return slot - 1
