"""The actor's shard path, composed from its stages:

    read → encode text → generate → encode image → store → commit
    (read.py)  (text.py)  (generate.py)  (store.py, image.py)  (commit.py)

A ShardWorker is a plain object: the Ray executor holds one per actor, and tests run it
in-process. The generating thread reads, encodes text and generates; images go to the
store pool per batch; each shard's commit runs on a commit thread while the next shard
generates, so the generator is not kept waiting on them. A new per-sample stage (a
quality scorer, best-of-n) slots in between ``generate`` and ``store`` in
:meth:`ShardWorker._generate_all`, as the quality stage (quality.py) does: its model
scorers and best-of-n run there, its cheap scorers on the store threads.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np
import pyarrow as pa

from models.base import ImageModel
from pipeline.input.shards import KeyFormat, Shard
from pipeline.output.formats import make_writer
from pipeline.output.storage import OutputFolder
from pipeline.spec import JobSpec
from pipeline.stages.carry import carry_over
from pipeline.stages.commit import ShardRun, commit_shard
from pipeline.stages.generate import Generator, generation_params
from pipeline.stages.image import EXTENSIONS, encode_image
from pipeline.stages.quality import QualityStage
from pipeline.stages.read import ShardReader
from pipeline.stages.samples import utf8_safe
from pipeline.stages.scorers import make_scorers
from pipeline.stages.store import Inline, StorePool, store_threads
from pipeline.stages.text import TextEncoder

ProgressCallback = Callable[[int, int], None]  # (images done, images failed) since last call


class ShardWorker:
    """Runs whole shards with one loaded model and writes them under ``folder``."""

    def __init__(self, spec: JobSpec, model: ImageModel, keys: KeyFormat, folder: OutputFolder,
                 deterministic: bool, io_threads: int | None = None,
                 overlap_encoding: bool = False, device: str = "cpu"):
        self.spec, self.model, self.keys, self.folder = spec, model, keys, folder
        self.params = generation_params(spec, model)
        model.warmup(self.params)  # one bucket per job: (width, height, steps) are job-wide
        if hasattr(model, "batch_invariant"):  # runtime.deterministic decides, not the device
            model.batch_invariant = deterministic
        self.text = TextEncoder(model, spec.runtime.embedding_cache, deterministic)
        self.generate = Generator(model, self.params, self.text)
        threads = io_threads if io_threads is not None else store_threads(
            spec.output.format, os.cpu_count() or 1)
        self.store = StorePool(threads, spec.runtime.batch_size, spec.output.image_format,
                               spec.output.quality)
        self.quality = QualityStage(spec.quality, make_scorers(spec.quality, device),
                                    self.generate, self.store.pool)
        if self.quality.scores_on_store:  # cheap scorers beside encoding, off the draw path
            self.store.scorers = self.quality.cheap
        # Encoding the next batch while this one generates pays on a GPU; on CPU the two
        # torch ops fight over the same cores (measured: generation 2.5x slower).
        self.prefetch = (ThreadPoolExecutor(1, thread_name_prefix="synthset-prefetch")
                         if overlap_encoding else Inline())
        self.extension = EXTENSIONS[spec.output.image_format]
        self.read = ShardReader(spec, keys)
        self.committer = ThreadPoolExecutor(1, thread_name_prefix="synthset-commit")
        self.committing: Future | None = None
        self.placement: dict = {}  # where the executor placed this actor (node, index, share)
        self._warm_io()

    def run(self, shard: Shard, on_progress: ProgressCallback | None = None) -> dict:
        """Generate and commit one shard; returns the content of its marker."""
        return self.start(shard, on_progress).result()

    def start(self, shard: Shard, on_progress: ProgressCallback | None = None,
              upcoming: Shard | None = None) -> Future:
        """Generate one shard and hand its commit to the commit thread; the future holds
        its marker. The commit (last uploads, metadata, packed object, marker) overlaps
        the next shard's generation. At most one commit waits while a shard generates,
        so a slow store holds generation back instead of piling shards up in memory.
        ``upcoming``, the shard due next, has its input read while this one generates."""
        started = time.time()
        folder = self.folder.scoped()  # this shard's own retry count
        name = self.keys.shard_name(shard.id)
        writer = make_writer(self.spec.output.format, folder, name, self.extension,
                             replace=shard.retry_keys is not None)
        if writer.committed is not None:
            # An earlier attempt committed it and its result was lost (say, the actor died
            # while the commit call waited behind the next shard): nothing to read or draw.
            done: Future = Future()
            done.set_result(writer.commit(pa.table({}), {}))  # writes nothing; that marker
            return done
        timings: Counter[str] = Counter()
        table, samples = self.read(shard, timings)
        if upcoming is not None:
            self.read.ahead(upcoming)
        run = ShardRun(shard, name, table, samples, writer, folder, started, timings,
                       actor={**self.placement, "pid": os.getpid(),
                              "store_threads": self.store.threads})
        if shard.retry_keys is not None:
            # --retry-failed reopened the commit: every sample not retried takes its
            # committed outcome (and image) over
            run.rejected = carry_over(folder, writer, samples, shard.retry_keys)
        todo = [s for s in samples if s.status == "pending"]
        if on_progress and len(todo) < len(samples):
            carried = sum(s.status == "success" for s in samples)
            on_progress(carried, len(samples) - len(todo) - carried)
        run.pending, rejected = self._generate_all(todo, writer, timings, on_progress)
        run.rejected += rejected
        if self.committing is not None:
            wait([self.committing])  # its outcome is the caller's of that shard
        self.committing = self.committer.submit(self._commit, run)
        return self.committing

    def _commit(self, run: ShardRun) -> dict:
        cache = self.text.cache
        return commit_shard(run, self.spec, self.params, self.model.model_id,
                            {"hits": cache.hits, "misses": cache.misses})

    def _generate_all(self, todo: list, writer, timings: Counter,
                      on_progress: ProgressCallback | None) -> tuple[list, list]:
        """Draw every pending sample in batches, handing images to the store pool.
        Returns the store tasks and the rejected draws kept as rows of their own."""
        pending: list[tuple[list, Future]] = []
        rejected: list = []
        size = self.spec.runtime.batch_size
        batches = [todo[i:i + size] for i in range(0, len(todo), size)]
        # Text encoding of batch k+1 overlaps generation of batch k (on accelerators).
        ahead = self.prefetch.submit(self.text, batches[0], timings) if batches else None
        for k, batch in enumerate(batches):
            embedded = ahead
            if k + 1 < len(batches):
                ahead = self.prefetch.submit(self.text, batches[k + 1], timings)
            images = self.generate(batch, timings, embedded)
            drawn = [(s, pixels) for s, pixels in zip(batch, images) if pixels is not None]
            drawn, kept_rejects = self.quality(drawn, timings)  # scorers; best-of-n redraws
            pending.extend(self.store.submit(writer, drawn + kept_rejects))
            rejected += [s for s, _ in kept_rejects]
            if on_progress:
                on_progress(len(drawn), len(batch) - len(drawn))
        return pending, rejected

    def _warm_io(self) -> None:
        """Pay one-time costs before the actor reports ready, not inside the first shard
        (where the import lock stalls every shard thread): Arrow's first full validation,
        the image codec (the writers' pyarrow.compute import came with the registry), and the
        cheap quality scorers."""
        utf8_safe(pa.chunked_array([pa.array([""])]))
        encode_image(np.full((8, 8, 3), 128, np.uint8), self.spec.output.image_format,
                     self.spec.output.quality)
        # a scorer's first call imports its library (imagehash pulls in scipy): not in a shard
        pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        for scorer in self.quality.cheap:
            scorer.score(pixels, "warm-up")
