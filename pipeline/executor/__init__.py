"""The only package that imports ray: the actor pool, GPU pinning, dispatch and resubmits.

Each actor pins one GPU when the cluster has them (or the CPUs it computes on when
it has none), loads its model once in the constructor, and runs whole shards in two
calls: ``generate(shard)`` draws it and starts its commit in the background, and
``commit(shard_id)``, queued behind the actor's next shard, returns the marker, so a
shard's last uploads and commit overlap the next one's generation. The driver keeps
``runtime.shards_in_flight`` shards queued for generation per actor so none idles
between shards, replaces dead actors, and resubmits failed shards a bounded number
of times.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from pipeline.executor.actor import GenerationActor, ProgressSink
from pipeline.executor.capacity import CapacityWatch, ExecutorError, plan_actors
from pipeline.executor.metrics import MeteredProgress
from pipeline.input.shards import KeyFormat, Shard
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
        # "local" always starts an embedded instance, never a stray cluster on this host.
        ray.init(address="local", include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"TRANSFORMERS_VERBOSITY": "error"}})


@dataclass
class RunOutcome:
    """What the executor did: committed markers, shards given up on, and why."""

    committed: list[dict] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


@dataclass(eq=False)
class _Slot:
    """One actor as the driver sees it: starting, then ready, then maybe lost."""

    id: int
    handle: object
    ready_ref: object
    ready: bool = False
    last_seen: float = field(default_factory=time.time)
    lost_reason: str = ""
    upcoming: Shard | None = None  # promised to this actor next; its input is read ahead


class RayExecutor:
    """Runs shards on a pool of GenerationActors until each is committed or given up.

    Actors that die (SIGKILL, node loss, preemption) are replaced and their shards
    resubmitted; actors that fail to start are tolerated up to
    ``runtime.max_actor_failures``; an actor silent for ``runtime.stall_timeout_s``
    while it holds work is killed and replaced.
    """

    def __init__(self, spec: JobSpec, keys: KeyFormat, progress,
                 committed: Callable[[int], dict | None] = lambda shard_id: None) -> None:
        self.spec, self.keys = spec, keys
        self.committed = committed  # shard id -> its marker in storage, if committed
        self.progress = MeteredProgress(progress, spec.name)  # and Prometheus metrics
        self.rt = spec.runtime
        self.count, self.resources = plan_actors(spec)
        self.sink = ProgressSink.options(num_cpus=0).remote()
        # Not a threaded actor (max_concurrency > 1): there Ray's main thread spins on the
        # GIL checking signals while a task runs, taking a core (measured: tiny SD at half
        # speed on 2 cores). Queued shards wait in Ray and start the moment one returns.
        self.actor_class = ray.remote(max_restarts=0, max_task_retries=0)(GenerationActor)
        self.spec_json = spec.model_dump_json()
        self.slots: list[_Slot] = []
        self.inflight: dict = {}  # ObjectRef -> (slot, shard, "generate" or "commit")
        self.queue: deque[Shard] = deque()
        self.attempts: Counter[int] = Counter()
        self.actor_failures = 0
        self.outcome = RunOutcome()
        self._next_id = 0
        self.capacity = CapacityWatch(self.resources, self.rt.capacity_timeout_s, self.progress)

    def run(self, shards: list[Shard]) -> RunOutcome:
        self.queue.extend(shards)
        for _ in range(min(self.count, len(shards))):
            self._start_actor()
        log.info("starting %d actor(s) with %s", len(self.slots), self.resources)
        try:
            while self.queue or self.inflight or any(s.upcoming for s in self.slots):
                self._step()
        finally:
            self._poll_progress()
            self.progress.in_flight(0)
            for slot in self.slots:
                ray.kill(slot.handle)
            ray.kill(self.sink)
        return self.outcome

    def _step(self) -> None:
        self.capacity.check([s for s in self.slots if not s.ready],
                            sum(s.ready for s in self.slots))
        waiting = {s.ready_ref: s for s in self.slots if not s.ready}
        refs = list(self.inflight) + list(waiting)
        if not refs:
            raise ExecutorError("no actor is left to run the remaining shards")
        ready, _ = ray.wait(refs, num_returns=1, timeout=self.rt.progress_interval_s)
        for ref in ready:
            if ref in waiting:
                self._on_ready(waiting[ref], ref)
            else:
                self._on_result(ref)
        self._feed()
        self.progress.in_flight(len(self.inflight))
        self._poll_progress()
        self._kill_stalled()

    def _start_actor(self) -> None:
        self._next_id += 1
        handle = self.actor_class.options(**self.resources).remote(
            self.spec_json, self.keys, self.resources["num_cpus"], self.sink, self._next_id)
        self.slots.append(_Slot(self._next_id, handle, handle.ready.remote()))

    def _on_ready(self, slot: _Slot, ref) -> None:
        try:
            info = ray.get(ref)
        except RayActorError as e:
            self.slots.remove(slot)
            self.sink.leave.remote(slot.id)
            self.actor_failures += 1
            reason = _cause(e)
            if self.actor_failures > self.rt.max_actor_failures:
                raise ExecutorError(f"{self.actor_failures} actors failed to start; "
                                    f"last error: {reason}") from None
            log.warning("actor failed to start (%d of %d tolerated): %s", self.actor_failures,
                        self.rt.max_actor_failures, reason)
            if self.queue or self.inflight:
                self._start_actor()
            return
        log.info("actor %d ready: %s", slot.id, info)
        slot.ready, slot.last_seen = True, time.time()

    def _on_result(self, ref) -> None:
        slot, shard, stage = self.inflight.pop(ref)
        try:
            stats = ray.get(ref)
        except RayActorError as e:
            self._lose(slot, slot.lost_reason or f"actor died: {_cause(e)}")
            self._retry(shard, slot.lost_reason or f"actor died: {_cause(e)}")
            return
        except RayTaskError as e:
            self._retry(shard, _cause(e))
        else:
            slot.last_seen = time.time()
            if stage == "generate":
                # Queued behind the actor's next shard, so that shard generates meanwhile
                # (with shards_in_flight=1 none is queued yet: give it one first).
                if not self._load(slot, "generate"):
                    self._feed_slot(slot, most=1)
                self.inflight[slot.handle.commit.remote(shard.id)] = (slot, shard, "commit")
                return
            self.outcome.committed.append(stats)
            self.progress.shard_done(stats)

    def _feed(self) -> None:
        """Keep ``shards_in_flight`` shards queued for generation on every ready actor."""
        for slot in self.slots:
            self._feed_slot(slot)
        for idle in [s for s in self.slots if s.ready and not self._load(s, "generate")]:
            # the queue ran dry: an idle actor takes a shard promised to a busy one
            busy = next((s for s in self.slots if s.upcoming is not None), None)
            if busy is not None:
                self.queue.append(busy.upcoming)
                busy.upcoming = None
                self._feed_slot(idle)

    def _feed_slot(self, slot: _Slot, most: int | None = None) -> None:
        limit = self.rt.shards_in_flight if most is None else most
        while slot.ready and (slot.upcoming or self.queue) and \
                self._load(slot, "generate") < limit:
            # The shard after this one is promised to the same actor, which reads its
            # input while this one generates; a lost actor gives it back (_lose).
            shard = slot.upcoming or self.queue.popleft()
            slot.upcoming = self.queue.popleft() if self.queue else None
            ref = slot.handle.generate.remote(shard, slot.upcoming)
            self.inflight[ref] = (slot, shard, "generate")

    def _load(self, slot: _Slot, stage: str | None = None) -> int:
        return sum(s is slot and stage in (None, st) for s, _, st in self.inflight.values())

    def _lose(self, slot: _Slot, reason: str) -> None:
        if slot not in self.slots:
            return  # already replaced for an earlier in-flight shard
        self.slots.remove(slot)
        self.sink.leave.remote(slot.id)  # its replacement takes its place on the node
        slot.ready = False  # nothing more goes to it
        if slot.upcoming is not None:
            self.queue.appendleft(slot.upcoming)
            slot.upcoming = None
        self.actor_failures += 1
        if self.actor_failures > self.rt.max_actor_failures:
            raise ExecutorError(f"{self.actor_failures} actors lost; last: {reason}")
        log.warning("actor %d lost (%s); starting a replacement", slot.id, reason)
        self._start_actor()

    def _retry(self, shard: Shard, reason: str) -> None:
        self.attempts[shard.id] += 1
        marker = self.committed(shard.id)  # None also when storage cannot say (an outage)
        if marker is not None and shard.retry_keys is None:
            # The commit landed and only its answer was lost (say, the actor died while
            # the commit call waited behind its next shard): a marker beats attempt counts.
            log.warning("shard %d: %s, but its marker is committed; counting it done",
                        shard.id, reason)
            self.outcome.committed.append(marker)
            self.progress.shard_done(marker)
            return
        if self.attempts[shard.id] >= self.rt.max_shard_attempts:
            log.error("shard %d failed %d times, giving up: %s", shard.id,
                      self.attempts[shard.id], reason)
            self.outcome.failed[shard.id] = reason
            self.progress.shard_failed(shard.id)
        else:
            log.warning("shard %d attempt %d failed, resubmitting: %s", shard.id,
                        self.attempts[shard.id], reason)
            self.queue.append(shard)

    def _kill_stalled(self) -> None:
        now = time.time()
        for slot in self.slots:
            if slot.ready and self._load(slot) and now - slot.last_seen > self.rt.stall_timeout_s:
                slot.lost_reason = (f"actor {slot.id} stalled: no batch finished in "
                                    f"{self.rt.stall_timeout_s:.0f} s")
                log.error(slot.lost_reason)
                ray.kill(slot.handle)
                slot.last_seen = now  # its refs fail shortly; don't kill twice

    def _poll_progress(self) -> None:
        try:
            done, failed, seen = ray.get(self.sink.take.remote(), timeout=10)
        except (GetTimeoutError, RayActorError):
            return
        for slot in self.slots:
            slot.last_seen = max(slot.last_seen, seen.get(slot.id, 0))
        self.progress.images(done, failed)


def _cause(error: RayTaskError) -> str:
    cause = error.cause if hasattr(error, "cause") else None
    text = f"{type(cause).__name__}: {cause}" if cause else str(error)
    return text.strip().splitlines()[0][:500] if text.strip() else type(error).__name__

