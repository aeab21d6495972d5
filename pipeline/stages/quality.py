"""The quality stage, between generate and store: model scorers, and best-of-n.

Without ``quality.accept`` only the model scorers run here, one batch at a time on the
actor's device; the cheap ones run later on the store threads, beside encoding. With
``quality.accept`` every draw is scored here (the cheap scorers on the store threads,
waited for), and a sample whose draw fails the expression is redrawn with the next
attempt's seed, up to ``quality.max_attempts`` draws; the best draw is kept. With
``quality.keep_rejected`` the other draws are handed on too, as rows of their own
(``Sample.rejected_draw``: key ``KEY_aN``, status ``rejected``).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import Executor

import numpy as np

from models.base import derive_seed
from pipeline.stages.accept import parse_accept
from pipeline.stages.samples import Sample
from pipeline.stages.scorers import Scorer, numeric_columns

Drawn = list[tuple[Sample, np.ndarray]]


def attempt_seed(seed: int, attempt: int) -> int:
    """The seed of draw ``attempt`` of a sample: from its own seed and the attempt alone,
    so a redraw lands on the same image whatever the batch, shard or actor."""
    return seed if attempt == 0 else derive_seed(seed, "attempt", attempt)


def score_cheap(scorers: list[Scorer], pixels: np.ndarray, prompt: str) -> dict:
    """Every cheap scorer's columns of one image (called on a store thread)."""
    scores: dict = {}
    for scorer in scorers:
        scores.update(scorer.score(pixels, prompt))
    return scores


class QualityStage:
    """Scores drawn images; with an accept expression, redraws rejected ones."""

    def __init__(self, quality, scorers: list[Scorer], generate, threads: Executor):
        self.cheap = [s for s in scorers if not s.batched]
        self.models = [s for s in scorers if s.batched]
        self.generate, self.threads = generate, threads
        self.accept = (parse_accept(quality.accept, numeric_columns(quality.scorers))
                       if quality.accept else None)
        self.max_attempts = quality.max_attempts
        self.keep_rejected = quality.keep_rejected

    @property
    def scores_on_store(self) -> bool:
        """Whether the store threads run the cheap scorers (no accept: nothing waits)."""
        return self.accept is None and bool(self.cheap)

    def __call__(self, drawn: Drawn, timings: Counter) -> tuple[Drawn, Drawn]:
        """``(kept, rejected)``: the draw kept for each sample, and with
        ``quality.keep_rejected`` the other draws as rows of their own (else none)."""
        if self.accept is None:
            self._score(drawn, timings, cheap=False)
            return drawn, []
        return self._best_of_n(drawn, timings)

    def _score(self, drawn: Drawn, timings: Counter, cheap: bool) -> None:
        if not drawn or not (self.models or (cheap and self.cheap)):
            return  # nothing to time: a job without scorers has no "score" stage
        t = time.perf_counter()
        samples, images = [s for s, _ in drawn], [p for _, p in drawn]
        prompts = [s.prompt for s in samples]
        for scorer in self.models:
            for sample, scores in zip(samples, scorer.score_batch(images, prompts)):
                sample.scores.update(scores)
        if cheap and self.cheap:
            found = self.threads.map(lambda d: score_cheap(self.cheap, d[1], d[0].prompt), drawn)
            for sample, scores in zip(samples, found):
                sample.scores.update(scores)
        timings["score"] += time.perf_counter() - t

    def _best_of_n(self, drawn: Drawn, timings: Counter) -> tuple[Drawn, Drawn]:
        """Redraw rejected samples with the next attempt's seed; keep each one's best."""
        self._score(drawn, timings, cheap=True)
        first = {id(s): s.seed for s, _ in drawn}
        draws = {id(s): [self._keep(s, p, 0)] for s, p in drawn}
        todo = [s for s, _ in drawn if not self.accept(s.scores)]
        for attempt in range(1, self.max_attempts):
            if not todo:
                break
            for s in todo:
                s.seed, s.scores = attempt_seed(first[id(s)], attempt), {}
                s.draws += 1
            redrawn = [(s, p) for s, p in zip(todo, self.generate(todo, timings)) if p is not None]
            for s in todo:  # a failed redraw is not the sample's end: it keeps its best draw
                s.status, s.error_message = "pending", None
            self._score(redrawn, timings, cheap=True)
            for s, p in redrawn:
                draws[id(s)].append(self._keep(s, p, attempt))
                if not self.keep_rejected:  # only the best so far is needed: hold no more
                    draws[id(s)] = [_best(draws[id(s)])]
            todo = [s for s, _ in redrawn if not self.accept(s.scores)]
        return self._settle(drawn, draws)

    def _settle(self, drawn: Drawn, draws: dict[int, list[tuple]]) -> tuple[Drawn, Drawn]:
        """Each sample takes its best draw; the others become rejected rows (if held)."""
        kept, rejected = [], []
        for s, _ in drawn:
            best = _best(draws[id(s)])
            _, s.seed, s.scores, pixels, s.attempt = best
            s.accepted = self.accept(s.scores)
            kept.append((s, pixels))
            for d in draws[id(s)]:
                if d is not best:
                    reject = s.rejected_draw(d[1], d[2], d[4])
                    reject.accepted = self.accept(reject.scores)
                    rejected.append((reject, d[3]))
        return kept, rejected

    def _keep(self, sample: Sample, pixels: np.ndarray, attempt: int) -> tuple:
        # (rank, seed, scores, pixels, attempt); max() keeps the earlier draw on a tie
        return self.accept.rank(sample.scores), sample.seed, dict(sample.scores), pixels, attempt


def _best(draws: list[tuple]) -> tuple:
    """The best of a sample's draws; ``max`` keeps the earliest on a tie."""
    return max(draws, key=lambda k: k[0])
