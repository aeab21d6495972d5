"""The per-shard loop: read → encode text → generate → encode images → write → marker.

A ShardWorker is a plain object: the Ray executor holds one per actor, and tests
can run it in-process. Image encoding and uploads run on a thread pool, and each
shard's commit on a commit thread while the next shard generates, so the generator
is not kept waiting on them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np
import pyarrow as pa

from models.base import GenerationParams, ImageModel
from pipeline.imaging import EXTENSIONS, blank_mask, encode_image
from pipeline.retry import carry_over
from pipeline.samples import BLANK_IMAGE, GENERATION_FAILED, Sample, build_samples, utf8_safe
from pipeline.shards import KeyFormat, Shard
from pipeline.spec import JobSpec
from pipeline.storage import OutputFolder
from pipeline.writers import make_writer

log = logging.getLogger("synthset")
ProgressCallback = Callable[[int, int], None]  # (images done, images failed) since last call


def generation_params(spec: JobSpec, model: ImageModel) -> GenerationParams:
    """The job's generation section, with the model's native size filling the gaps."""
    g = spec.generation
    width, height = model.native_size or (512, 512)
    params = GenerationParams(width=g.width or width, height=g.height or height, steps=g.steps,
                              guidance_scale=g.guidance_scale, extra=dict(spec.model.options))
    model.check_params(params)
    return params


def store_threads(output_format: str, cpus: int) -> int:
    """Threads for encoding and storing images. Encoding is CPU work: a thread per core but
    the one the generating thread needs (measured on 2 cores, null generator: 1 thread
    10% faster than 2, and 2 faster than 4). ``files`` also PUTs every image, which waits
    on the network, so it gets more."""
    return max(cpus, 16) if output_format == "files" else max(1, cpus - 1)


class EmbeddingCache:
    """Encoded prompts keyed by (prompt, negative prompt), least recently used out first."""

    def __init__(self, model: ImageModel, capacity: int, one_at_a_time: bool):
        self.model, self.capacity, self.one_at_a_time = model, capacity, one_at_a_time
        self.entries: OrderedDict[tuple, object] = OrderedDict()
        self.hits = self.misses = 0

    def lookup(self, samples: list[Sample]):
        """The embeddings of ``samples`` in order, encoding only what is not cached."""
        wanted = [(s.prompt, s.negative_prompt) for s in samples]
        missing = list(dict.fromkeys(w for w in wanted if w not in self.entries))
        self.hits += len(wanted) - len(missing)
        self.misses += len(missing)
        # One prompt per call keeps each embedding independent of its batch-mates.
        groups = [[m] for m in missing] if self.one_at_a_time else [missing] if missing else []
        fresh = {}
        for group in groups:
            embeds = self.model.encode_prompt([p for p, _ in group], [n for _, n in group])
            for i, key in enumerate(group):
                fresh[key] = embeds.select([i])
        rows = [fresh[w] if w in fresh else self._touch(w) for w in wanted]
        for key, value in fresh.items():
            self.entries[key] = value
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return type(rows[0]).concat(rows)

    def _touch(self, key: tuple):
        self.entries.move_to_end(key)
        return self.entries[key]


class _Inline:
    """The ThreadPoolExecutor interface, run in the calling thread."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as e:  # surfaced by .result(), like a pool's future
            future.set_exception(e)
        return future


class ShardWorker:
    """Runs whole shards with one loaded model and writes them under ``folder``."""

    def __init__(self, spec: JobSpec, model: ImageModel, keys: KeyFormat, folder: OutputFolder,
                 deterministic: bool, io_threads: int | None = None,
                 overlap_encoding: bool = False):
        self.spec, self.model, self.keys, self.folder = spec, model, keys, folder
        self.params = generation_params(spec, model)
        model.warmup(self.params)  # one bucket per job: (width, height, steps) are job-wide
        if hasattr(model, "batch_invariant"):  # runtime.deterministic decides, not the device
            model.batch_invariant = deterministic
        self.cache = EmbeddingCache(model, spec.runtime.embedding_cache, deterministic)
        threads = io_threads or store_threads(spec.output.format, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="synthset-io")
        self.in_flight = threading.BoundedSemaphore(max(2 * spec.runtime.batch_size, 2 * threads))
        # Encoding the next batch while this one generates pays on a GPU; on CPU the two
        # torch ops fight over the same cores (measured: generation 2.5x slower).
        self.prefetch = (ThreadPoolExecutor(1, thread_name_prefix="synthset-prefetch")
                         if overlap_encoding else _Inline())
        self.cache_lock = threading.Lock()
        self.extension = EXTENSIONS[spec.output.image_format]
        self.threads = threads
        self.committer = ThreadPoolExecutor(1, thread_name_prefix="synthset-commit")
        self.committing: Future | None = None
        self._warm_io()

    def run(self, shard: Shard, on_progress: ProgressCallback | None = None) -> dict:
        """Generate and commit one shard; returns the content of its marker."""
        return self.start(shard, on_progress).result()

    def start(self, shard: Shard, on_progress: ProgressCallback | None = None) -> Future:
        """Generate one shard and hand its commit to the commit thread; the future holds
        its marker. The commit (last uploads, metadata, packed object, marker) overlaps
        the next shard's generation. At most one commit waits while a shard generates,
        so a slow store holds generation back instead of piling shards up in memory."""
        timings: Counter[str] = Counter()
        started = time.time()
        folder = self.folder.scoped()  # this shard's own retry count
        writer = make_writer(self.spec.output.format, folder, self.keys.shard_name(shard.id),
                             self.extension, replace=shard.retry_keys is not None)
        if writer.committed is not None:
            # An earlier attempt committed it and its result was lost (say, the actor died
            # while the commit call waited behind the next shard): nothing to read or draw.
            done: Future = Future()
            done.set_result(writer.commit(pa.table({}), {}))  # writes nothing; that marker
            return done
        table = self._read(shard, timings)
        samples = build_samples(table, shard, self.spec, self.keys)
        if shard.retry_keys is not None:
            # --retry-failed reopened the commit: every sample not retried takes its
            # committed outcome (and image) over
            carry_over(folder, writer, samples, shard.retry_keys)
        todo = [s for s in samples if s.status == "pending"]
        if on_progress and len(todo) < len(samples):
            carried = sum(s.status == "success" for s in samples)
            on_progress(carried, len(samples) - len(todo) - carried)
        pending = self._generate_all(todo, writer, timings, on_progress)
        if self.committing is not None:
            wait([self.committing])  # its outcome is the caller's of that shard
        self.committing = self.committer.submit(self._commit, shard, table, samples, writer,
                                                pending, timings, started, folder)
        return self.committing

    def _commit(self, shard: Shard, table: pa.Table, samples: list[Sample], writer,
                pending: list[tuple[list, Future]], timings: Counter, started: float,
                folder: OutputFolder) -> dict:
        t = time.perf_counter()
        for chunk, future in pending:
            timings["image_encode_and_upload"] += self._settle(chunk, future)
        timings["wait_for_uploads"] += time.perf_counter() - t
        t = time.perf_counter()
        metadata = self._metadata(table, samples)
        # timed before _stats so it reaches the marker; commit's uploads are in its "uploads"
        timings["metadata"] += time.perf_counter() - t
        return writer.commit(metadata, self._stats(shard, samples, timings, started, folder))

    def _generate_all(self, todo: list[Sample], writer, timings: Counter,
                      on_progress: ProgressCallback | None) -> list[tuple[list, Future]]:
        """Draw every pending sample in batches, handing images to the store pool."""
        pending: list[tuple[list, Future]] = []
        size = self.spec.runtime.batch_size
        batches = [todo[i:i + size] for i in range(0, len(todo), size)]
        # Text encoding of batch k+1 overlaps generation of batch k (on accelerators).
        ahead = self.prefetch.submit(self._embed, batches[0], timings) if batches else None
        for k, batch in enumerate(batches):
            embedded = ahead
            if k + 1 < len(batches):
                ahead = self.prefetch.submit(self._embed, batches[k + 1], timings)
            images = self._generate(batch, timings, embedded)
            drawn = [(s, pixels) for s, pixels in zip(batch, images) if pixels is not None]
            pending.extend(self._submit_store(writer, drawn))
            if on_progress:
                on_progress(len(drawn), len(batch) - len(drawn))
        return pending

    def _read(self, shard: Shard, timings: Counter) -> pa.Table:
        t = time.perf_counter()
        parts = [part for seg in shard.segments for part in seg.read(self.spec.storage_options)]
        timings["read"] += time.perf_counter() - t
        return pa.concat_tables(parts) if parts else pa.table({})

    def _embed(self, batch: list[Sample], timings: Counter):
        t = time.perf_counter()
        with self.cache_lock:  # the prefetch thread and sample isolation share the cache
            embeds = self.cache.lookup(batch)
        timings["text_encode"] += time.perf_counter() - t
        return embeds

    def _generate(self, batch: list[Sample], timings: Counter,
                  embedded: Future | None = None) -> list[np.ndarray | None]:
        """Images for ``batch``; a failing batch is retried sample by sample."""
        try:
            embeds = embedded.result() if embedded else self._embed(batch, timings)
            return self._draw(batch, embeds, timings)
        except Exception as e:
            if len(batch) == 1:
                batch[0].fail(f"{GENERATION_FAILED}: {type(e).__name__}: {e}"[:500])
                return [None]
            log.warning("batch of %d failed (%s); isolating samples", len(batch), e)
            return [img for s in batch for img in self._generate([s], timings)]

    def _draw(self, batch: list[Sample], embeds, timings: Counter) -> list[np.ndarray | None]:
        for s, truncated in zip(batch, embeds.truncated):
            s.truncated = bool(truncated)
        t = time.perf_counter()
        # Batch invariance is the model's job (on CPU each family draws image by image);
        # the worker's part is encoding every prompt alone (EmbeddingCache).
        images = self.model.generate(embeds, [s.seed for s in batch], self.params)
        if not isinstance(images, np.ndarray):
            images = list(images)
        if len(images) != len(batch):
            raise ValueError(f"the model returned {len(images)} images for {len(batch)} seeds")
        timings["generate"] += time.perf_counter() - t
        out: list[np.ndarray | None] = []
        for s, pixels, blank in zip(batch, images, blank_mask(images)):
            if blank:
                s.fail(BLANK_IMAGE)
                out.append(None)
            else:
                out.append(pixels)
        return out

    def _submit_store(self, writer, drawn: list[tuple[Sample, np.ndarray]]) -> list:
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

    def _store(self, writer, chunk: list[tuple[Sample, np.ndarray]]) -> tuple[list, float]:
        t = time.perf_counter()
        stored = []
        for sample, pixels in chunk:
            data = encode_image(pixels, self.spec.output.image_format, self.spec.output.quality)
            name = writer.put_image(sample.key, data)
            stored.append((hashlib.sha256(data).hexdigest(), name))
        return stored, time.perf_counter() - t

    def _settle(self, samples: list[Sample], future: Future) -> float:
        try:
            stored, seconds = future.result()
        except Exception as e:
            # Storage errors are not the samples' fault: fail the shard, no marker.
            raise RuntimeError(f"writing {samples[0].key}..{samples[-1].key} failed: {e}") from e
        for sample, (sha256, name) in zip(samples, stored):
            sample.sha256, sample.file, sample.status = sha256, name, "success"
        return seconds

    def _warm_io(self) -> None:
        """Pay one-time costs before the actor reports ready, not inside the first shard
        (where the import lock stalls every shard thread): the writers' imports with
        pyarrow.compute (~0.15 s), Arrow's first full validation and the image codec."""
        import pipeline.formats  # noqa: F401  (imported lazily by make_writer)

        utf8_safe(pa.chunked_array([pa.array([""])]))
        encode_image(np.full((8, 8, 3), 128, np.uint8), self.spec.output.image_format,
                     self.spec.output.quality)

    def _stats(self, shard: Shard, samples: list[Sample], timings: Counter,
               started: float, folder: OutputFolder) -> dict:
        errors = Counter(s.error_message for s in samples if s.status == "error")
        return {
            "shard": shard.id, "shard_name": self.keys.shard_name(shard.id),
            "rows": shard.num_rows, "count": len(samples),
            "successes": sum(s.status == "success" for s in samples),
            "failed": sum(s.status == "error" for s in samples),
            "error_counts": dict(errors.most_common(20)),
            "truncated": sum(s.truncated for s in samples),
            **({} if shard.retry_keys is None else {"retried": len(shard.retry_keys)}),
            "retries": folder.retry_count,
            "embedding_cache": {"hits": self.cache.hits, "misses": self.cache.misses},
            "start_time": started, "end_time": time.time(),
            "duration_s": round(time.time() - started, 3),
            "stage_seconds": {k: round(v, 3) for k, v in timings.items()},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }

    def _metadata(self, table: pa.Table, samples: list[Sample]) -> pa.Table:
        p = self.params
        spec = self.spec
        ok = [s.status == "success" for s in samples]
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
            "model": [self.model.model_id] * len(samples),
            "model_family": [spec.model.family] * len(samples),
            "steps": pa.array([p.steps] * len(samples), pa.int32()),
            "guidance_scale": pa.array([p.guidance_scale] * len(samples), pa.float32()),
        }
        used = {spec.input.prompt_column, spec.input.id_column, spec.input.seed_column,
                spec.input.negative_prompt_column}
        rows = pa.array([s.row for s in samples], pa.int64())
        for name in table.column_names:
            if name not in used:
                out = name if name not in columns else f"input_{name}"
                columns[out] = utf8_safe(table.column(name).take(rows))
        return pa.table(columns)
