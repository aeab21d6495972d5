"""The only module that imports ray: the actor pool, GPU pinning, dispatch and resubmits.

Each actor pins one GPU when the cluster has them (or the CPUs it computes on when
it has none), loads its model once in the constructor, and runs whole shards. The
driver keeps ``runtime.shards_in_flight`` shards queued per actor so none idles
between shards, replaces dead actors, and resubmits failed shards a bounded
number of times.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, deque
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from pipeline.shards import KeyFormat, Shard
from pipeline.spec import JobSpec

log = logging.getLogger("synthset")


def connect(address: str | None = None) -> None:
    """Join ``address`` (or $RAY_ADDRESS), or start an embedded local Ray."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, log_to_driver=True)


@ray.remote
class _ProgressSink:
    """Collects per-batch counts from actors so the driver's bar moves within shards."""

    def __init__(self) -> None:
        self.done = self.failed = 0

    def report(self, done: int, failed: int) -> None:
        self.done += done
        self.failed += failed

    def take(self) -> tuple[int, int]:
        counts = (self.done, self.failed)
        self.done = self.failed = 0
        return counts


class GenerationActor:
    """Holds one loaded model and a ShardWorker; ``run_shard`` commits one shard."""

    def __init__(self, spec_json: str, keys: KeyFormat, cpus: int, sink) -> None:
        import torch

        from models.registry import load_model, resolve_device
        from pipeline.storage import OutputFolder
        from pipeline.worker import ShardWorker

        torch.set_num_threads(max(1, cpus))
        self.spec = JobSpec.model_validate_json(spec_json)
        self.device = resolve_device()
        m = self.spec.model
        model = load_model(m.family, m.path, m.encoder, self.device, m.dtype, m.scheduler,
                           m.trust_remote_code, m.options)
        folder = OutputFolder(self.spec.output.path, self.spec.storage_options,
                              self.spec.output.retries, self.spec.output.retry_backoff_s)
        deterministic = self.spec.runtime.deterministic
        if deterministic == "auto":
            deterministic = self.device == "cpu"
        self.worker = ShardWorker(self.spec, model, keys, folder, deterministic)
        self.sink = sink

    def ready(self) -> dict:
        return {"device": self.device, "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id()}

    def run_shard(self, shard: Shard) -> dict:
        return self.worker.run(shard, lambda d, f: self.sink.report.remote(d, f))


@dataclass
class RunOutcome:
    """What the executor did: committed markers, shards given up on, and why."""

    committed: list[dict] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


def plan_actors(spec: JobSpec) -> tuple[int, dict]:
    """How many actors, and the resources each requests, from what the cluster has."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    count = spec.runtime.actors
    if gpus:
        count = gpus if count == "auto" else count
        return count, {"num_gpus": 1, "num_cpus": spec.runtime.cpus_per_actor or 1}
    count = 1 if count == "auto" else count
    # Torch in an actor uses as many threads as the CPUs the actor asked for.
    per_actor = spec.runtime.cpus_per_actor or max(1, cpus // count)
    return count, {"num_gpus": 0, "num_cpus": per_actor}


class RayExecutor:
    """Runs shards on a pool of GenerationActors until each is committed or given up."""

    def __init__(self, spec: JobSpec, keys: KeyFormat, progress) -> None:
        self.spec, self.keys, self.progress = spec, keys, progress
        self.count, self.resources = plan_actors(spec)
        self.sink = _ProgressSink.options(num_cpus=0).remote()
        self.actor_class = ray.remote(max_restarts=0, max_task_retries=0)(GenerationActor)
        self.spec_json = spec.model_dump_json()
        self.replacements = 0

    def _new_actor(self):
        return self.actor_class.options(**self.resources).remote(
            self.spec_json, self.keys, self.resources["num_cpus"], self.sink)

    def run(self, shards: list[Shard]) -> RunOutcome:
        outcome = RunOutcome()
        queue: deque[Shard] = deque(shards)
        attempts: Counter[int] = Counter()
        inflight: dict = {}
        actors = [self._new_actor() for _ in range(min(self.count, len(shards)))]
        log.info("starting %d actor(s) with %s", len(actors), self.resources)

        def feed(actor) -> None:
            while queue and sum(a is actor for a, _ in inflight.values()) < \
                    self.spec.runtime.shards_in_flight:
                shard = queue.popleft()
                inflight[actor.run_shard.remote(shard)] = (actor, shard)

        for actor in actors:
            feed(actor)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1,
                                timeout=self.spec.runtime.progress_interval_s)
            self._poll_progress()
            for ref in ready:
                actor, shard = inflight.pop(ref)
                try:
                    stats = ray.get(ref)
                    outcome.committed.append(stats)
                    self.progress.shard_done(stats)
                except RayActorError as e:
                    actor = self._replace(actor, actors, inflight, e)
                    self._retry(shard, attempts, queue, outcome, f"actor died: {e}")
                except RayTaskError as e:
                    self._retry(shard, attempts, queue, outcome, _cause(e))
                if actor is not None:
                    feed(actor)
            if queue and not inflight:
                feed(actors[0])
        self._poll_progress()
        return outcome

    def _retry(self, shard: Shard, attempts: Counter, queue: deque, outcome: RunOutcome,
               reason: str) -> None:
        attempts[shard.id] += 1
        if attempts[shard.id] >= self.spec.runtime.max_shard_attempts:
            log.error("shard %d failed %d times, giving up: %s", shard.id, attempts[shard.id],
                      reason)
            outcome.failed[shard.id] = reason
            self.progress.shard_failed(shard.id)
        else:
            log.warning("shard %d attempt %d failed, resubmitting: %s", shard.id,
                        attempts[shard.id], reason)
            queue.append(shard)

    def _replace(self, actor, actors: list, inflight: dict, error: Exception):
        if actor not in actors:
            return None  # already replaced for an earlier in-flight shard
        actors.remove(actor)
        self.replacements += 1
        if self.replacements > 2 * self.count + self.spec.runtime.max_shard_attempts:
            raise RuntimeError(f"actors keep dying ({self.replacements} replaced): {error}")
        fresh = self._new_actor()
        actors.append(fresh)
        return fresh

    def _poll_progress(self) -> None:
        try:
            done, failed = ray.get(self.sink.take.remote(), timeout=10)
        except GetTimeoutError:
            return
        self.progress.images(done, failed)


def _cause(error: RayTaskError) -> str:
    cause = error.cause if hasattr(error, "cause") else None
    text = f"{type(cause).__name__}: {cause}" if cause else str(error)
    return text.strip().splitlines()[0][:500] if text.strip() else type(error).__name__

