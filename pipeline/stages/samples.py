"""From a shard's input rows to samples: ids, keys, seeds, and quarantine of bad rows."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa

from models.base import derive_seed
from pipeline.input.shards import KeyFormat, Shard, rejected_key
from pipeline.spec import JobSpec

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
@dataclass
class Sample:
    """One requested image: where it comes from, how to draw it, and how it went."""

    key: str
    row: int  # row of the shard's input table
    id: str
    prompt: str | None
    negative_prompt: str | None
    seed: int
    image_index: int
    status: str = "pending"
    error_message: str | None = None
    truncated: bool = False
    sha256: str | None = None
    file: str | None = None
    scores: dict = field(default_factory=dict)  # the quality scorers' columns
    draws: int = 1  # images drawn for it (best-of-n redraws more)
    attempt: int = 0  # which draw was kept
    accepted: bool | None = None  # whether it passed quality.accept
    kept: bool = True  # False: a rejected draw stored beside it (quality.keep_rejected)

    def fail(self, message: str) -> None:
        self.status, self.error_message = "error", message

    def rejected_draw(self, seed: int, scores: dict, attempt: int) -> Sample:
        """Another draw of this sample that was not kept, as a row of its own: key
        ``KEY_aN``, the draw's seed and scores, ``accepted`` False."""
        return Sample(key=rejected_key(self.key, attempt), row=self.row, id=self.id,
                      prompt=self.prompt, negative_prompt=self.negative_prompt, seed=seed,
                      image_index=self.image_index, truncated=self.truncated,
                      scores=dict(scores), attempt=attempt, accepted=False, kept=False)


def prompt_problem(prompt: object, what: str = "prompt") -> str | None:
    """Why a prompt cannot be generated, or None if it can."""
    if isinstance(prompt, bytes):
        return f"{what} is not valid UTF-8 ({utf8_error(prompt)})"
    if prompt is None:
        return "prompt is null"
    if not isinstance(prompt, str):
        return f"prompt is a {type(prompt).__name__}, not a string"
    if not prompt.strip():
        return "prompt is empty or whitespace only"
    return None


def utf8_error(data: bytes) -> str:
    try:
        data.decode()
    except UnicodeDecodeError as e:
        return f"byte {e.start}: {e.reason}"
    return "valid"


def texts(column: pa.ChunkedArray) -> list:
    """The column as Python values; a string that is not valid UTF-8 (lone surrogates
    included) comes back as its raw bytes, for the caller to quarantine."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        return [_decode(v) for v in column.cast(pa.large_binary()).to_pylist()]


def _decode(value: bytes | None) -> str | bytes | None:
    try:
        return None if value is None else value.decode()
    except UnicodeDecodeError:
        return value


def utf8_safe(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A string column with invalid UTF-8 repaired (as \\xNN), so outputs stay readable."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column
    try:
        column.validate(full=True)
        return column
    except pa.ArrowInvalid:
        raw = column.cast(pa.large_binary()).to_pylist()
        return pa.chunked_array([pa.array([v if v is None else v.decode(errors="backslashreplace")
                                           for v in raw], column.type)])


def readable(value: object) -> object:
    """Raw bytes of a quarantined value, shown as text (invalid bytes as \\xNN)."""
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else value


def clean_prompt(prompt: str) -> str:
    """Strip surrounding whitespace and control characters that tokenizers choke on."""
    return _CONTROL.sub(" ", prompt).strip()


def sample_ids(table: pa.Table, shard: Shard, id_column: str | None) -> list[str]:
    """The id column as strings, or a stable ``file#row`` id from the input position."""
    if id_column:
        return [v if v is None or isinstance(v, bytes) else str(v)
                for v in texts(table.column(id_column))]
    return [f"{seg.name}#{row}" for seg in shard.segments for row in range(seg.start, seg.stop)]


def build_samples(table: pa.Table, shard: Shard, spec: JobSpec, keys: KeyFormat) -> list[Sample]:
    """Every requested image of the shard, bad rows already marked as errors."""
    inp, per_prompt = spec.input, spec.generation.images_per_prompt
    prompts = texts(table.column(inp.prompt_column))
    negatives = (texts(table.column(inp.negative_prompt_column))
                 if inp.negative_prompt_column else [None] * len(prompts))
    seeds = (table.column(inp.seed_column).to_pylist()
             if inp.seed_column else [None] * len(prompts))
    ids = sample_ids(table, shard, inp.id_column)
    samples = []
    for row, (prompt, negative, seed, sid) in enumerate(zip(prompts, negatives, seeds, ids)):
        problem = prompt_problem(prompt)
        if isinstance(negative, bytes):
            problem = prompt_problem(negative, "negative prompt")
        if sid is None or isinstance(sid, bytes):
            problem = "id is null" if sid is None else prompt_problem(sid, "id")
            sid = f"{shard.segments[0].name}#row{row}"
        for i in range(per_prompt):
            s = Sample(
                key=keys.key(shard.id, row * per_prompt + i), row=row, id=sid,
                prompt=clean_prompt(prompt) if problem is None else readable(prompt),
                negative_prompt=negative if isinstance(negative, str) else None,
                seed=(seed + i) if seed is not None else derive_seed(spec.generation.seed, sid, i),
                image_index=i)
            if problem:
                s.fail(problem)
            samples.append(s)
    return samples
