"""Prompt templates as an input source: row i is computed from (template, seed, i) alone.

The slots span a mixed-radix space of N combinations (the last slot varies fastest).

* ``cartesian``: row i is combination i.
* ``sample`` + ``dedupe``: row i is combination perm(i), where perm is a seeded bijection of
  [0, N) (a Feistel network, cycle-walked into range), so no combination repeats. With
  weights, each combination c gets a round R_c ~ Geometric(q_c), q_c its weight relative
  to the heaviest combination; the rows are round 0 in perm order, then round 1, ... A
  weighted shuffle of every combination, each exactly once (rounds are capped at 32).
* ``sample`` without dedupe: independent per-row weighted draws seeded by (seed, i).

Constraints (``distinct``, ``exclude``) and rounds skip positions. Then a small index of
kept-row counts per block of positions, built once while planning, maps row i to its
block; workers rescan only the blocks their shard covers. Nothing holds all prompts.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.input.sources import InputError, InputSet
from pipeline.input.template_spec import TemplateSpec
from pipeline.spec import InputSpec

_M = (1 << 64) - 1
_FEISTEL, _ROUND, _DRAW = 1, 2, 3  # independent hash streams
BLOCK = 16_384  # positions per index block; also the most rows per Arrow table
MAX_ROUNDS = 32
MAX_SCAN = 1 << 27  # positions the planner may scan to build the index
MAX_ATTEMPTS = 64  # redraws of a row that violates a constraint (dedupe: false)


def _mix_int(x: int) -> int:
    """splitmix64's finaliser on a Python int."""
    x &= _M
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M
    return x ^ (x >> 31)


def stream_key(seed: int, *labels: int) -> int:
    """A 64-bit key for one purpose (labels) of one seed."""
    key = _mix_int(seed)
    for label in labels:
        key = _mix_int(key ^ _mix_int(label + 0x9E3779B97F4A7C15))
    return key


def hash64(key: int, x: np.ndarray) -> np.ndarray:
    """A keyed 64-bit hash of a uint64 array (splitmix64 finaliser, vectorised)."""
    x = x.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniform(key: int, x: np.ndarray) -> np.ndarray:
    """Floats in (0, 1], one per element of ``x``, fixed by (key, x)."""
    return ((hash64(key, x) >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0 ** -53


class Permutation:
    """A seeded bijection of [0, n): a 6-round Feistel network, cycle-walked into range."""

    def __init__(self, n: int, seed: int):
        bits = max(2, (n - 1).bit_length())
        self.n, self.half = n, (bits + 1) // 2
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = [stream_key(seed, _FEISTEL, r) for r in range(6)]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        half = np.uint64(self.half)
        left, right = x >> half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ (hash64(key, right) & self.mask)
        return (left << half) | right

    def __call__(self, i: np.ndarray) -> np.ndarray:
        x = self._encrypt(i.astype(np.uint64))
        # The network permutes [0, 4^half) ⊇ [0, n); re-encrypting until back in range
        # (cycle walking) is a bijection of [0, n), ~2 rounds on average.
        outside = np.flatnonzero(x >= np.uint64(self.n))
        while outside.size:
            x[outside] = self._encrypt(x[outside])
            outside = outside[x[outside] >= np.uint64(self.n)]
        return x


class Slots:
    """Slot values, weights and constraints as arrays; rows are (rows, slots) value indices."""

    def __init__(self, t: TemplateSpec):
        self.names = list(t.slots)
        self.values = [np.array(list(v), dtype=object) for v in t.slots.values()]
        # the words each value is written as in the prompt (``say``; default the value)
        self.words = [np.array([t.say.get(name, {}).get(v, v) for v in vals], dtype=object)
                      for name, vals in zip(self.names, self.values, strict=True)]
        weights = [np.array(list(v.values()) if isinstance(v, dict) else [1.0] * len(v), float)
                   for v in t.slots.values()]
        self.cumulative = [np.cumsum(w) / w.sum() for w in weights]
        self.relative = [w / w.max() for w in weights]
        self.weighted = any(isinstance(v, dict) for v in t.slots.values())
        self.sizes = [len(v) for v in self.values]
        self.total = math.prod(self.sizes)
        self.rules = self._rules(t)

    def _rules(self, t: TemplateSpec) -> list[list[tuple[int, np.ndarray]]]:
        """Each rule forbids rows where every (slot, value indices) pair matches."""
        rules = []
        for group in t.distinct:
            for a_pos, a in enumerate(group):
                for b in group[a_pos + 1:]:
                    ia, ib = self.names.index(a), self.names.index(b)
                    for va, value in enumerate(self.values[ia]):
                        vb = np.flatnonzero(self.values[ib] == value)
                        if vb.size:
                            rules.append([(ia, np.array([va])), (ib, vb)])
        for rule in t.exclude:
            rules.append([(self.names.index(s), np.flatnonzero(np.isin(
                self.values[self.names.index(s)], [v] if isinstance(v, str) else v)))
                for s, v in rule.items()])
        return rules

    def decode(self, combos: np.ndarray) -> np.ndarray:
        """Mixed-radix digits of combination numbers: (rows,) -> (rows, slots)."""
        digits = np.empty((combos.size, len(self.sizes)), np.int64)
        rest = combos.astype(np.uint64)
        for k in range(len(self.sizes) - 1, -1, -1):
            digits[:, k] = (rest % np.uint64(self.sizes[k])).astype(np.int64)
            rest //= np.uint64(self.sizes[k])
        return digits

    def allowed(self, digits: np.ndarray) -> np.ndarray:
        ok = np.ones(len(digits), bool)
        for rule in self.rules:
            hit = np.ones(len(digits), bool)
            for slot, values in rule:
                hit &= np.isin(digits[:, slot], values)
            ok &= ~hit
        return ok

    def weight(self, digits: np.ndarray) -> np.ndarray:
        """Each row's weight relative to the heaviest combination, in (0, 1]."""
        q = np.ones(len(digits))
        for k, rel in enumerate(self.relative):
            q *= rel[digits[:, k]]
        return q

    def draw(self, key: int, rows: np.ndarray) -> np.ndarray:
        """Independent weighted draws, one combination per row number."""
        digits = np.empty((rows.size, len(self.sizes)), np.int64)
        for k, cum in enumerate(self.cumulative):
            u = uniform(stream_key(key, k), rows)
            digits[:, k] = np.minimum(np.searchsorted(cum, u), len(cum) - 1)
        return digits


class TemplateSource:
    """A prompt template as one input source: ``name``, ``num_rows`` and ``read``."""

    name = "template"
    size = 0

    def __init__(self, template: TemplateSpec, prompt_column: str = "prompt"):
        self.template, self.prompt_column = template, prompt_column
        self.slots = Slots(template)
        if self.slots.total >= 1 << 62:
            raise InputError(f"input.template: {self.slots.total:.3g} combinations; at most "
                             "2^62 are supported")
        self.sampled = template.mode == "sample"
        self.perm = Permutation(self.slots.total, template.seed) if self.sampled else None
        self.rounds = MAX_ROUNDS if self.sampled and self.slots.weighted else 1
        self.positions = self.rounds * self.slots.total  # round-major, then perm order
        self.index: tuple[int, ...] | None = None  # kept rows up to the end of each block
        self.num_rows = self._plan()

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([(self.prompt_column, pa.string())] +
                         [(n, pa.string()) for n in self.slots.names])

    def identity(self) -> tuple[str, str, int]:
        blob = f"{self.template.model_dump_json()}|{self.prompt_column}".encode()
        return self.name, hashlib.sha256(blob).hexdigest()[:16], self.num_rows

    def _plan(self) -> int:
        t, total = self.template, self.slots.total
        if t.mode == "sample" and not t.dedupe:
            self._digits_iid(np.arange(min(t.count, BLOCK), dtype=np.uint64))  # feasible?
            return t.count
        wanted = t.count if t.mode == "sample" else total
        if wanted > total:
            raise InputError(f"input.template.count: {wanted} distinct prompts wanted but the "
                             f"slots only have {total} combinations; lower count or set "
                             "dedupe: false")
        if not self.slots.rules and self.rounds == 1:
            return wanted  # no filter: row i is position i
        return self._build_index(wanted if t.mode == "sample" else None)

    def _build_index(self, wanted: int | None) -> int:
        """Scan positions until ``wanted`` rows are kept (None: all); record counts per block."""
        positions, ends, kept = self.positions, [], 0
        for start in range(0, positions, BLOCK):
            if start >= MAX_SCAN:
                raise InputError(
                    f"input.template: constraints or weights need the planner to scan "
                    f"combinations, and {MAX_SCAN} scanned gave only {kept} of {wanted} "
                    "prompts; loosen the constraints or shrink the slots")
            kept += len(self._combos(start, min(start + BLOCK, positions)))
            ends.append(kept)
            if wanted is not None and kept >= wanted:
                break
        if wanted is None:
            wanted = kept
        if kept < wanted or not kept:
            raise InputError(f"input.template: only {kept} distinct prompts satisfy the "
                             f"constraints, {wanted} wanted; lower count or set dedupe: false")
        self.index = tuple(ends)
        return wanted

    def _combos(self, start: int, stop: int) -> np.ndarray:
        """Digits of the kept rows among positions [start, stop), in order."""
        pos = np.arange(start, stop, dtype=np.uint64)
        rnd, pos = pos // np.uint64(self.slots.total), pos % np.uint64(self.slots.total)
        combos = self.perm(pos) if self.perm else pos
        digits = self.slots.decode(combos)
        keep = self.slots.allowed(digits)
        if self.rounds > 1:
            keep &= self._round(combos, digits) == rnd
        return digits[keep]

    def _round(self, combos: np.ndarray, digits: np.ndarray) -> np.ndarray:
        q = self.slots.weight(digits)
        u = uniform(stream_key(self.template.seed, _ROUND), combos)
        with np.errstate(divide="ignore"):
            r = np.where(q >= 1.0, 0.0, np.floor(np.log(u) / np.log1p(-np.minimum(q, 1 - 1e-16))))
        return np.minimum(r, self.rounds - 1).astype(np.uint64)

    def _digits_iid(self, rows: np.ndarray) -> np.ndarray:
        digits = np.empty((rows.size, len(self.slots.sizes)), np.int64)
        todo = np.arange(rows.size)
        for attempt in range(MAX_ATTEMPTS):
            digits[todo] = self.slots.draw(stream_key(self.template.seed, _DRAW, attempt),
                                           rows[todo])
            todo = todo[~self.slots.allowed(digits[todo])]
            if not todo.size:
                return digits
        raise InputError(f"input.template: {todo.size} rows still break the constraints after "
                         f"{MAX_ATTEMPTS} redraws; the constraints exclude almost everything")

    def digits(self, start: int, stop: int):
        """Value indices of rows [start, stop), one block at a time."""
        if self.index is None:
            for lo in range(start, stop, BLOCK):
                rows = np.arange(lo, min(lo + BLOCK, stop), dtype=np.uint64)
                if self.sampled and not self.template.dedupe:
                    yield self._digits_iid(rows)
                else:
                    yield self.slots.decode(self.perm(rows) if self.perm else rows)
            return
        block = int(np.searchsorted(self.index, start, side="right"))
        row = self.index[block - 1] if block else 0
        while row < stop and block < len(self.index):
            found = self._combos(block * BLOCK, min((block + 1) * BLOCK, self.positions))
            lo, hi = max(start - row, 0), min(stop - row, len(found))
            if lo < hi:
                yield found[lo:hi]
            row, block = row + len(found), block + 1

    def read(self, start: int, stop: int, storage_options: dict[str, Any] | None = None):
        """Rows [start, stop) as Arrow tables: the prompt and one label column per slot."""
        for digits in self.digits(start, stop):
            labels = [vals[digits[:, k]] for k, vals in enumerate(self.slots.values)]
            words = [w[digits[:, k]] for k, w in enumerate(self.slots.words)]
            prompts = [self._prompt(dict(zip(self.slots.names, row))) for row in zip(*words)]
            yield pa.table([pa.array(prompts, pa.string())] +
                           [pa.array(col.tolist(), pa.string()) for col in labels],
                           schema=self.schema)


    def _prompt(self, words: dict[str, str]) -> str:
        # ``say`` words may name other slots (one level): fill those first
        filled = {k: w.format_map(words) if "{" in w else w for k, w in words.items()}
        return self.template.text.format_map(filled)


def resolve_template(spec: InputSpec) -> InputSet:
    """The template as an InputSet of one source, its index built if constraints need one."""
    source = TemplateSource(spec.template, spec.prompt_column)
    return InputSet("template", (source,), source.schema)
