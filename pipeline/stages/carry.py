"""A retried shard's samples that keep their outcome: committed rows carried over.

For ``--retry-failed`` (``output.retry`` picks the shards): every sample not being
redrawn takes its committed outcome, quality columns and rejected draws from the shard's
metadata, and the writer keeps its committed image; only the failed samples are
generated again.
"""

from __future__ import annotations

from pipeline.input.shards import split_rejected_key
from pipeline.output.formats.base import REJECTED, STORED, SUCCEEDED, ShardWriter
from pipeline.output.layout import metadata_name
from pipeline.output.retry import CARRIED, read_outcomes
from pipeline.output.storage import OutputFolder
from pipeline.stages.samples import Sample

# quality columns that are not scores
ON_SAMPLE = ("attempt", "accepted", "kept", "variety", "vendi")


def carry_over(folder: OutputFolder, writer: ShardWriter, samples: list[Sample],
               retry_keys: tuple[str, ...]) -> list[Sample]:
    """Give every sample not being retried its committed outcome; the writer keeps the
    committed images. A retried sample stays pending, unless its input row is bad.
    Returns the carried rejected draws (``quality.keep_rejected``) of the kept samples."""
    rows = read_outcomes(folder, writer.shard_name)
    rejected = [r for r in rows if r["status"] == REJECTED]
    rows = [r for r in rows if r["status"] != REJECTED]
    if [r["key"] for r in rows] != [s.key for s in samples]:
        raise ValueError(f"{folder.display(metadata_name(writer.shard_name))} does not hold the "
                         "rows this shard's input gives; run `synthset verify`")
    retry = set(retry_keys)
    for s, row in zip(samples, rows):
        # only rows still failed: an earlier attempt of this retry may have fixed some
        if row["key"] in retry and row["status"] == "error":
            continue
        for column in CARRIED:
            setattr(s, column, row[column])
        carry_scores(s, row)
    carried = carry_rejected(samples, rejected)
    writer.carry({s.key: s.sha256 for s in samples + carried if s.status in STORED})
    return carried


def carry_rejected(samples: list[Sample], rows: list[dict]) -> list[Sample]:
    """The committed rejected draws of samples that keep their outcome, as samples again
    (a sample being redrawn draws its rejects anew)."""
    by_key = {s.key: s for s in samples if s.status == SUCCEEDED}
    carried = []
    for row in rows:
        base = by_key.get((split_rejected_key(row["key"]) or ("",))[0])
        if base is not None:
            reject = base.rejected_draw(row["seed"], {}, row["attempt"])
            for column in CARRIED:
                setattr(reject, column, row[column])
            carry_scores(reject, row)
            reject.kept = False
            carried.append(reject)
    return carried


def carry_scores(sample: Sample, row: dict) -> None:
    """A carried sample keeps its committed quality columns (``variety`` is recomputed; a
    carried image has no CLIP embedding, so ``vendi`` counts only its regenerated peers)."""
    for name, value in row.items():
        if name in ("key", *CARRIED, "variety", "vendi"):
            continue
        if name in ON_SAMPLE:
            setattr(sample, name, value)
        elif value is not None:
            sample.scores[name] = value
