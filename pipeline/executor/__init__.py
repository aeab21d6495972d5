"""The only module that imports ray: the actor pool, GPU pinning, dispatch and resubmits.

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
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

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


@ray.remote
class _ProgressSink:
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
        # The GPU's share of its node's CPUs: they run the actor's image encoding (512x512
        # PNG is ~25 images/s per core) and uploads.
        per_gpu = spec.runtime.cpus_per_actor or cpus_per_gpu(
            [n["Resources"] for n in ray.nodes() if n["Alive"]])
        return count, {"num_gpus": 1, "num_cpus": per_gpu}
    count = 1 if count == "auto" else count
    # Torch in an actor uses as many threads as the CPUs the actor asked for.
    return count, {"num_gpus": 0, "num_cpus": spec.runtime.cpus_per_actor or cpu_share(cpus,
                                                                                       count)}


def cpu_share(cpus: int, actors: int) -> float:
    """Each of ``actors`` actors' share of ``cpus`` CPUs: whole CPUs when there are enough
    (Ray takes fractions only below 1), else an equal fraction, so that every actor fits
    (at 4 actors on 2 CPUs, 0.5 each; with 1 each, two would wait forever)."""
    if cpus >= actors:
        return cpus // actors
    return math.floor(cpus / actors * 1e4) / 1e4  # Ray keeps 4 decimals


def cpus_per_gpu(nodes: list[dict]) -> int:
    """CPUs each GPU actor can reserve on every GPU node: the smallest CPU-per-GPU share,
    so an actor fits wherever a GPU is (head nodes without GPUs don't count)."""
    shares = [int(n.get("CPU", 0) // n["GPU"]) for n in nodes if n.get("GPU")]
    return max(1, min(shares, default=1))


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


class ExecutorError(RuntimeError):
    """The pool cannot make progress (actors keep failing to start or dying)."""


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
        self.sink = _ProgressSink.options(num_cpus=0).remote()
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


class CapacityWatch:
    """Tells "waiting for capacity" apart from "the cluster is gone" while actors start.

    Every few seconds: the driver's own node must still be alive in the GCS (a dead raylet
    otherwise leaves ``ray.wait`` waiting forever); pending actors are reported to progress
    and ``status`` with what they need; and if no alive node could ever host one (the
    demand is infeasible: say, a head with no CPUs whose workers never came up), the run
    stops after ``runtime.capacity_timeout_s`` naming the missing resources.
    """

    INTERVAL_S = 5.0
    GRACE_S = 10.0  # an actor younger than this is starting, not waiting

    def __init__(self, resources: dict, timeout_s: float, progress) -> None:
        self.need = {"CPU": resources.get("num_cpus", 0), "GPU": resources.get("num_gpus", 0)}
        self.timeout_s, self.progress = timeout_s, progress
        self.node_id = ray.get_runtime_context().get_node_id()
        self._checked = 0.0
        self._infeasible_since: float | None = None

    def check(self, pending: list, ready: int) -> None:
        # slots carry when they were started (last_seen); the young ones are just starting
        pending = [s for s in pending if time.time() - s.last_seen > self.GRACE_S]
        if not pending:  # every actor is up or starting: nothing to wait for
            self._infeasible_since = None
            self.progress.wait_note(None)
        now = time.time()
        if now - self._checked < self.INTERVAL_S:
            return
        self._checked = now
        nodes = self._nodes()
        if not any(n["NodeID"] == self.node_id and n["Alive"] for n in nodes):
            raise ExecutorError("the driver's Ray node is gone (its raylet died or the "
                                "cluster was stopped)")
        if not pending:
            return
        fits = [n for n in nodes if n["Alive"] and self._fits(n["Resources"])]
        need = ", ".join(f"{k}: {v:g}" for k, v in self.need.items() if v)
        if fits:
            self._infeasible_since = None
            waiting = len(pending) - self._placed(len(pending), ready)
            self.progress.wait_note(f"waiting for capacity: {waiting} actor(s) pending, each "
                                    f"needs {{{need}}}" if waiting else None)
            return
        self._infeasible_since = self._infeasible_since or now
        have = "; ".join(_describe_node(n) for n in nodes if n["Alive"]) or "no alive node"
        text = (f"no node can host an actor: each needs {{{need}}}, the cluster has {have}")
        self.progress.wait_note(f"{text} (waiting up to {self.timeout_s:.0f} s for one to join)")
        if now - self._infeasible_since >= self.timeout_s:
            raise ExecutorError(f"{text}; waited {self.timeout_s:.0f} s "
                                "(runtime.capacity_timeout_s) for a node that fits")

    def _placed(self, pending: int, ready: int) -> int:
        """How many of the pending actors hold their resources already (loading a model):
        what the cluster has in use beyond the ready actors' share. Another tenant's use
        counts as ours here, so this errs towards "loading", never towards a false alarm."""
        total, free = ray.cluster_resources(), ray.available_resources()
        placed = pending
        for key, each in self.need.items():
            if each:
                held = total.get(key, 0) - free.get(key, 0) - ready * each
                placed = min(placed, max(0, int(held // each)))
        return placed

    def _fits(self, resources: dict) -> bool:
        return all(resources.get(k, 0) >= v for k, v in self.need.items() if v)

    @staticmethod
    def _nodes() -> list[dict]:
        try:
            return ray.nodes()
        except Exception as e:  # the GCS itself is unreachable
            raise ExecutorError(f"the Ray cluster is unreachable: {type(e).__name__}: "
                                f"{str(e)[:200]}") from None


def _describe_node(node: dict) -> str:
    r = node["Resources"]
    address = node.get("NodeManagerAddress", "?")
    return f"{address} (CPU {r.get('CPU', 0):g}, GPU {r.get('GPU', 0):g})"


def _cause(error: RayTaskError) -> str:
    cause = error.cause if hasattr(error, "cause") else None
    text = f"{type(cause).__name__}: {cause}" if cause else str(error)
    return text.strip().splitlines()[0][:500] if text.strip() else type(error).__name__

