"""``synthset run JOB --retry-failed``: regenerate only the failed samples of committed shards.

The driver picks every committed shard with samples that failed in generation and sends
it with their keys (``Shard.retry_keys``) through the usual executor; rows quarantined
for their input (null or invalid prompts, duplicate ids) fail the same way every time
and are left as they are.
The worker rebuilds the shard's samples from the input (same keys, same seeds), takes
the outcome of every other sample from the committed metadata (``stages.carry``), and
has the writer carry the committed images over; only the failed samples are generated
again. The commit is the usual one with the marker replaced last
(``formats.base.replace_marker``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pyarrow.parquet as pq

from pipeline.input.shards import Shard
from pipeline.output.formats.base import retryable, sample_fields
from pipeline.output.layout import JOB, MANIFEST, SUCCESS, metadata_name
from pipeline.output.storage import OutputFolder
from pipeline.spec import SpecError

# seed: best-of-n keeps a draw's derived seed, not the one the input gives
CARRIED = ("status", "error_message", "sha256", "file", "truncated", "seed")


def check_retry(folder: OutputFolder, overwrite: bool) -> None:
    """A retry needs an earlier run of the job to retry (a different job is refused later)."""
    if overwrite:
        raise SpecError("--retry-failed keeps what is committed; it cannot be combined with "
                        "--overwrite")
    if folder.read_json(JOB) is None:
        raise SpecError(f"--retry-failed: {folder.display()} holds no run of this job "
                        f"({JOB} missing); run it without --retry-failed first")


def drop_success(folder: OutputFolder) -> None:
    """Delete ``_SUCCESS`` (then its manifest): markers are about to change, and both are
    rewritten at the end."""
    folder.delete(SUCCESS)
    folder.delete(MANIFEST)


def read_outcomes(folder: OutputFolder, shard_name: str) -> list[dict]:
    """The committed rows of a shard: key and outcome columns only (no image bytes)."""
    name = metadata_name(shard_name)

    def read() -> list[dict]:
        with folder.open(name) as f:
            meta = pq.ParquetFile(f)
            columns = ["key", *CARRIED, *sample_fields(meta.schema_arrow)]
            return meta.read(columns=columns).to_pylist()
    return folder.call("reading", name, read)


def retry_shards(folder: OutputFolder, shards: list[Shard], markers: dict[str, dict],
                 shard_name: Callable[[int], str]) -> list[Shard]:
    """The committed shards with samples that failed in generation, each carrying their
    keys. Rows quarantined for their input are left alone: a retry cannot change them, so
    a shard whose only failures are bad rows is not rewritten.

    The marker's failure count is checked against the rows too: a retry that crashed
    after rewriting the rows but before replacing the marker is picked again (with no
    keys left to generate) and its commit is completed.
    """
    picked = []
    for shard in shards:
        marker = markers.get(shard_name(shard.id))
        if marker and marker.get("failed"):
            errors = [r for r in read_outcomes(folder, shard_name(shard.id))
                      if r["status"] == "error"]
            keys = tuple(r["key"] for r in errors if retryable(r["error_message"]))
            if keys or len(errors) != marker["failed"]:
                picked.append(dataclasses.replace(shard, retry_keys=keys))
    return picked
