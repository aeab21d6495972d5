"""Stages 4 and 5, encode image and store: pixels to PNG/JPEG/WebP bytes to the writer.

Both run on a pool of store threads (codecs release the GIL), so the generating thread
only hands a batch over. A bound on images in flight is the backpressure: a slow store
holds generation back instead of piling images up in memory.
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from pipeline.output.formats.base import ShardWriter
from pipeline.stages.image import encode_image
from pipeline.stages.quality import score_cheap
from pipeline.stages.samples import Sample
from pipeline.stages.scorers import Scorer


def store_threads(output_format: str, cpus: int) -> int:
    """Threads for encoding and storing images. Encoding is CPU work: a thread per core but
    the one the generating thread needs (measured on 2 cores, null generator: 1 thread
    10% faster than 2, and 2 faster than 4). ``files`` also PUTs every image, which waits
    on the network, so it gets more."""
    return max(cpus, 16) if output_format == "files" else max(1, cpus - 1)


class StorePool:
    """Encodes and stores images on ``threads`` threads; ``settle`` marks samples stored."""

    def __init__(self, threads: int, batch_size: int, image_format: str, quality: int,
                 scorers: list[Scorer] = ()):
        self.threads, self.image_format, self.quality = threads, image_format, quality
        self.scorers = list(scorers)  # cheap ones, run beside encoding
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="synthset-io")
        self.in_flight = threading.BoundedSemaphore(max(2 * batch_size, 2 * threads))

    def submit(self, writer: ShardWriter, drawn: list[tuple[Sample, np.ndarray]]) -> list:
        """Hand a batch's images to the pool as one task per thread: per-image tasks cost
        more than encoding a small JPEG. Returns ``[(samples, future)]``."""
        size = -(-len(drawn) // self.threads) if drawn else 0
        tasks = []
        for i in range(0, len(drawn), size or 1):
            chunk = drawn[i:i + size]
            for _ in chunk:  # backpressure: bounded images waiting for encode/upload
                self.in_flight.acquire()
            future = self.pool.submit(self._store, writer, chunk)
            future.add_done_callback(lambda _, n=len(chunk): self.in_flight.release(n))
            tasks.append(([s for s, _ in chunk], future))
        return tasks

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
        """Wait for one task; its samples become successes. Returns its seconds."""
        try:
            stored, seconds = future.result()
        except Exception as e:
            # Storage errors are not the samples' fault: fail the shard, no marker.
            raise RuntimeError(f"writing {samples[0].key}..{samples[-1].key} failed: {e}") from e
        for sample, (sha256, name, scores) in zip(samples, stored):
            sample.sha256, sample.file, sample.status = sha256, name, "success"
            sample.scores.update(scores)
        return seconds
