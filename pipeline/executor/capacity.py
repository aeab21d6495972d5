"""What the cluster can host: how many actors, what each reserves, and whether any node ever can.

``plan_actors`` sizes the pool from the cluster's resources (one actor per GPU, or an
equal share of a CPU node); ``CapacityWatch`` tells "waiting for capacity" apart from
"the cluster is gone" while actors start.
"""

from __future__ import annotations

import math
import time

import ray

from pipeline.spec import JobSpec


class ExecutorError(RuntimeError):
    """The pool cannot make progress (actors keep failing to start or dying)."""


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
