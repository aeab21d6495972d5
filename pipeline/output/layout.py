"""Every name in an output folder, in one place.

A job's output holds, at its top level:

| name | written by | when |
|---|---|---|
| ``_job.json`` | the driver | before any shard: fingerprint, plan, secret-free spec |
| ``_lock.GGGGGG.json`` | the driver | while a run holds the folder (see ``lock.py``) |
| ``_progress.json`` | the driver | every few seconds while running, and at the end |
| ``SSSSS.parquet`` | an actor | per shard: one metadata row per requested image |
| ``SSSSS/KEY.ext``, ``SSSSS.tar`` | an actor | per shard: the images, as the format keeps them |
| ``SSSSS_stats.json`` | an actor | per shard, last: the commit marker |
| ``_duplicates.pq`` | the driver | before ``_SUCCESS``: duplicate groups (``dedup.py``) |
| ``_manifest.pq`` | the driver | at the end, just before ``_SUCCESS``: one row per shard |
| ``_SUCCESS`` | the driver | last of all: the job's summary (the manifest's name and sha256) |
| ``report.html``, ``report.png`` | ``synthset report`` | on demand |

Names starting with ``_`` are bookkeeping, never data (WebDataset and ``datasets`` skip them).
"""

from __future__ import annotations

JOB = "_job.json"
PROGRESS = "_progress.json"
SUCCESS = "_SUCCESS"
# Not *.parquet: consumers glob "*.parquet" for the metadata shards (load_dataset with
# data_files, DuckDB's read_parquet), and a table of another schema among them breaks theirs.
DUPLICATES = "_duplicates.pq"
MANIFEST = "_manifest.pq"
LOCK_PREFIX = "_lock."
REPORT_HTML, REPORT_PNG = "report.html", "report.png"
MARKER_SUFFIX = "_stats.json"


def marker_name(shard_name: str) -> str:
    """The commit marker of a shard: ``SSSSS_stats.json``."""
    return f"{shard_name}{MARKER_SUFFIX}"


def metadata_name(shard_name: str) -> str:
    """The metadata Parquet of a shard (one row per requested image): ``SSSSS.parquet``."""
    return f"{shard_name}.parquet"


def lock_name(generation: int) -> str:
    """A run-lock object: ``_lock.GGGGGG.json``."""
    return f"{LOCK_PREFIX}{generation:06d}.json"


def shard_of_marker(name: str) -> str | None:
    """``SSSSS`` for a top-level marker name, else None."""
    if name.endswith(MARKER_SUFFIX) and "/" not in name:
        return name[: -len(MARKER_SUFFIX)]
    return None


def is_bookkeeping(name: str) -> bool:
    """Top-level objects that are not part of any shard: ``_*`` files and the report."""
    return "/" not in name and (name.startswith("_") or name in (REPORT_HTML, REPORT_PNG))
