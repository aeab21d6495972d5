"""Stage 2, encode text: prompts to embeddings, each prompt encoded once per actor."""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict

from models.base import ImageModel
from pipeline.stages.samples import Sample


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


class TextEncoder:
    """The stage: a batch of samples to its embeddings, timed, through the cache."""

    def __init__(self, model: ImageModel, capacity: int, one_at_a_time: bool):
        self.cache = EmbeddingCache(model, capacity, one_at_a_time)
        self._lock = threading.Lock()  # the prefetch thread and sample isolation share it

    def __call__(self, batch: list[Sample], timings: Counter):
        t = time.perf_counter()
        with self._lock:
            embeds = self.cache.lookup(batch)
        timings["text_encode"] += time.perf_counter() - t
        return embeds
