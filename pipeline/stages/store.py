"""Stages 4 and 5, encode image and store: pixels to PNG/JPEG/WebP bytes to the writer.

Both run on a pool of store threads (codecs release the GIL), so the generating thread
only hands a batch over. Bounds on images and on pixel bytes in flight are the
backpressure: a slow store holds generation back instead of piling images up in memory
(at 2048², 32 images in flight would be 400 MB; the byte budget keeps it to 256 MiB).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from pipeline.output.formats.base import REJECTED, SUCCEEDED, ShardWriter
from pipeline.stages.image import encode_image
from pipeline.stages.quality import score_cheap
from pipeline.stages.samples import Sample
from pipeline.stages.scorers import Scorer

MAX_BYTES_IN_FLIGHT = 256 * 2**20  # pixels handed to the store threads, not yet stored


def store_threads(output_format: str, cpus: float, generator_on_cpu: bool = True,
                  index: int = 0) -> int:
    """Threads for encoding and storing images, from the actor's share of its node's CPUs
    (``cpus``, what Ray reserved for it; fractional when a node holds more actors than
    cores) and its ``index`` among the actors on that node.

    Encoding is CPU work: a thread per core of the share, but the one the generating thread
    needs when it computes on the CPU (measured on 2 cores, null generator: 1 thread 10%
    faster than 2, and 2 faster than 4); every core of the share when the generator waits
    on a device instead. A fractional share is handed out by index, so the node's actors
    together hold as many threads as it has cores: at 0.5 CPU each, actors 0, 2, ... get
    none (they encode on their generating thread, between device batches) and 1, 3, ...
    one. ``files`` also PUTs every image, which waits on the network, so it gets more."""
    if output_format == "files":
        return max(int(cpus), 16)
    if generator_on_cpu:
        return max(1, int(cpus) - 1)
    # threads of actor k: the whole cores in [k·share, (k+1)·share) (exactly share when whole)
    # (shares are cut to 4 decimals, 2/3 to 0.6666: the tolerance keeps 3 of them at 2 cores)
    return math.floor((index + 1) * cpus + 1e-3) - math.floor(index * cpus + 1e-3)


class Inline:
    """The ThreadPoolExecutor interface, run in the calling thread (a pool of no threads)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as e:  # surfaced by .result(), like a pool's future
            future.set_exception(e)
        return future

    def shutdown(self, wait: bool = True) -> None:
        pass


class ByteBudget:
    """A semaphore counted in bytes. ``take`` waits until the bytes fit, except when nothing
    is held: a chunk larger than the whole budget still goes through, alone."""

    def __init__(self, limit: int):
        self.limit, self.used, self.peak = limit, 0, 0
        self._cond = threading.Condition()

    def take(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n
            self.peak = max(self.peak, self.used)

    def give(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class StorePool:
    """Encodes and stores images on ``threads`` threads (none: in the calling thread);
    ``settle`` marks samples stored."""

    def __init__(self, threads: int, batch_size: int, image_format: str, quality: int,
                 scorers: list[Scorer] = (), max_bytes: int = MAX_BYTES_IN_FLIGHT):
        self.threads, self.image_format, self.quality = threads, image_format, quality
        self.scorers = list(scorers)  # cheap ones, run beside encoding
        self.pool = (ThreadPoolExecutor(threads, thread_name_prefix="synthset-io") if threads
                     else Inline())
        self.capacity = max(2 * batch_size, 2 * threads)  # images waiting at most
        self.in_flight = threading.BoundedSemaphore(self.capacity)
        self.bytes = ByteBudget(max_bytes)

    def submit(self, writer: ShardWriter, drawn: list[tuple[Sample, np.ndarray]]) -> list:
        """Hand a batch's images to the pool as one task per thread: per-image tasks cost
        more than encoding a small JPEG. Returns ``[(samples, future)]``."""
        # a chunk never needs more slots than exist (best-of-n's kept rejects make a
        # batch larger than batch_size): it would wait on itself
        size = min(-(-len(drawn) // max(1, self.threads)), self.capacity) if drawn else 0
        tasks = []
        for i in range(0, len(drawn), size or 1):
            chunk = drawn[i:i + size]
            for _ in chunk:  # backpressure: bounded images waiting for encode/upload
                self.in_flight.acquire()
            nbytes = sum(pixels.nbytes for _, pixels in chunk)
            self.bytes.take(nbytes)  # ... and bounded pixel bytes (large images)
            future = self.pool.submit(self._store, writer, chunk)
            future.add_done_callback(lambda _, n=len(chunk), b=nbytes: self._done(n, b))
            tasks.append(([s for s, _ in chunk], future))
        return tasks

    def _done(self, images: int, nbytes: int) -> None:
        self.in_flight.release(images)
        self.bytes.give(nbytes)

    def _store(self, writer: ShardWriter,
               chunk: list[tuple[Sample, np.ndarray]]) -> tuple[list, float]:
        t = time.perf_counter()
        stored = []
        for sample, pixels in chunk:
            data = encode_image(pixels, self.image_format, self.quality)
            name = writer.put_image(sample.key, data)
            scores = score_cheap(self.scorers, pixels, sample.prompt) if self.scorers else {}
            stored.append((hashlib.sha256(data).hexdigest(), name, scores))
        return stored, time.perf_counter() - t

    @staticmethod
    def settle(samples: list[Sample], future: Future) -> float:
        """Wait for one task; its samples become successes (a stored rejected draw:
        ``rejected``). Returns its seconds."""
        try:
            stored, seconds = future.result()
        except Exception as e:
            # Storage errors are not the samples' fault: fail the shard, no marker.
            raise RuntimeError(f"writing {samples[0].key}..{samples[-1].key} failed: {e}") from e
        for sample, (sha256, name, scores) in zip(samples, stored):
            sample.sha256, sample.file = sha256, name
            sample.status = SUCCEEDED if sample.kept else REJECTED
            sample.scores.update(scores)
        return seconds
