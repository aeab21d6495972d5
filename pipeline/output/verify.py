"""``synthset verify``: check an output against its manifest, markers and metadata rows.

Every marker's data objects must exist with the sha256 it lists; every successful
row's image must exist with the sha256 of its row (loose files, tar members or
embedded Parquet bytes), and so must every stored rejected draw's (``KEY_aN``, of a
successful sample); every shard must hold exactly the keys its marker counts;
``_SUCCESS`` (and the ``_manifest.pq`` it names) must agree with the markers; and
nothing else may lie in the folder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from pipeline.input.shards import split_rejected_key
from pipeline.output.formats import get_format
from pipeline.output.formats.base import REJECTED, SUCCEEDED, ShardCheck
from pipeline.output.layout import JOB, SUCCESS, is_bookkeeping, marker_name, shard_of_marker
from pipeline.output.manifest import read_entries, read_markers
from pipeline.output.storage import OutputFolder


@dataclass
class Report:
    """What verify found: counts of what it checked and one line per problem."""

    output: str
    shards: int = 0
    images: int = 0
    failed_rows: int = 0
    rejected: int = 0  # stored rejected draws (quality.keep_rejected)
    objects: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    damaged: set[str] = field(default_factory=set)  # committed shards with a problem

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, limit: int = 50) -> str:
        rejected = f", {self.rejected} rejected draws" if self.rejected else ""
        head = (f"{'OK' if self.ok else 'FAILED'} {self.output}: {self.shards} shards, "
                f"{self.images} images{rejected}, {self.failed_rows} failed rows; "
                f"{self.objects} objects ({self.bytes / 2**20:.1f} MiB) checked")
        if self.ok:
            return head
        lines = [f"{head}; {len(self.problems)} problem(s):"]
        lines += [f"  - {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


def verify_output(folder: OutputFolder) -> Report:
    """Check everything under ``folder``; problems are collected, not raised."""
    report = Report(folder.display())
    job = folder.read_json(JOB)
    if job is None:
        report.problems.append(f"{JOB} is missing: not a synthset output")
        return report
    listing, markers = committed_markers(folder)
    expected = set()
    check_manifest(folder, job, markers, report)
    writer = get_format(job["spec"]["output"]["format"])
    for shard, marker in sorted(markers.items()):
        expected.add(marker_name(shard))
        expected |= check_shard(ShardCheck(folder, shard, marker, listing, report), writer)
    for name in sorted(set(listing) - expected):
        if is_bookkeeping(name):
            continue  # job bookkeeping (_job.json, _progress.json, a run's _lock.*), a report
        report.problems.append(f"{name}: orphan object, not listed by any marker or metadata row")
    return report


def committed_markers(folder: OutputFolder) -> tuple[dict[str, int], dict[str, dict]]:
    """Every object under the folder (name -> size) and the committed shards' markers."""
    listing = folder.find()
    names = sorted(shard for n in listing if (shard := shard_of_marker(n)) is not None)
    # only what the checks compare: 100,000 whole markers would hold ~1 GB
    markers = read_markers(folder, names, entries_only=True)
    return listing, dict(zip(names, markers))


def check_manifest(folder: OutputFolder, job: dict, markers: dict, report: Report) -> None:
    """``_SUCCESS`` exists and lists exactly the committed shards with their checksums."""
    total = job["plan"]["shards"]
    report.shards = len(markers)
    if len(markers) != total:
        report.problems.append(f"{len(markers)} of {total} shards are committed (markers)")
    manifest = folder.read_json(SUCCESS)
    if manifest is None:
        report.problems.append(f"{SUCCESS} is missing: the job has not completed")
        return
    try:
        listed = {s["shard_name"]: s for s in read_entries(folder, manifest)}
    except ValueError as e:
        report.problems.append(str(e))
        return
    for name in sorted(set(listed) | set(markers)):
        entry, marker = listed.get(name), markers.get(name)
        if entry is None:
            report.problems.append(f"{SUCCESS} does not list committed shard {name}")
        elif marker is None:
            report.problems.append(f"{SUCCESS} lists shard {name}, whose marker "
                                   f"{marker_name(name)} is missing")
        elif any(entry[k] != marker[k] for k in ("count", "successes", "failed", "objects")):
            report.problems.append(f"{SUCCESS} disagrees with {marker_name(name)} on counts or "
                                   "checksums")


def check_shard(c: ShardCheck, writer) -> set[str]:
    """Check one shard; returns the names of the objects it accounts for."""
    objects = c.marker.get("objects") or {}
    for name, want in sorted(objects.items()):
        if name not in c.listing:
            c.problem(f"{name}: missing (listed in {marker_name(c.shard)})")
        elif (got := c.sha256(name)) is not None and got != want:
            c.problem(f"{name}: sha256 mismatch (marker {marker_name(c.shard)} says "
                      f"{want[:12]}…, object has {got[:12]}…)")
    if c.metadata not in c.listing:
        return set(objects)  # already reported as missing
    rows = read_rows(c, c.metadata)
    if rows is None:
        return set(objects)
    rejected = [r for r in rows if r["status"] == REJECTED]
    rows = [r for r in rows if r["status"] != REJECTED]
    check_keys(c, rows)
    check_rejected(c, rows, rejected)
    images = {r["key"]: r for r in rows if r["status"] == SUCCEEDED}
    c.report.images += len(images)
    c.report.failed_rows += len(rows) - len(images)
    c.report.rejected += len(rejected)
    return set(objects) | writer.check(c, {**images, **{r["key"]: r for r in rejected}})


def read_rows(c: ShardCheck, name: str) -> list[dict] | None:
    """The metadata rows (without image bytes), or None if the Parquet is unreadable."""
    def read() -> list[dict]:
        with c.folder.open(name) as f:
            return pq.read_table(f, columns=["key", "status", "sha256", "file"]).to_pylist()
    try:
        return c.folder.call("reading", name, read)
    except Exception as e:
        c.problem(f"{name}: unreadable Parquet ({type(e).__name__}: {str(e)[:200]})")
        return None


def check_rejected(c: ShardCheck, rows: list[dict], rejected: list[dict]) -> None:
    """Each stored rejected draw is ``KEY_aN`` of a successful sample of the shard, once,
    and the marker counts them (``quality.rejected_stored``)."""
    kept = {r["key"] for r in rows if r["status"] == SUCCEEDED}
    counted = (c.marker.get("quality") or {}).get("rejected_stored", 0)
    if len(rejected) != counted:
        c.problem(f"{c.metadata}: {len(rejected)} rejected draws, marker counts {counted}")
    keys = [r["key"] for r in rejected]
    bad = [k for k in keys if (split_rejected_key(k) or ("",))[0] not in kept]
    bad += sorted(k for k, n in Counter(keys).items() if n > 1)
    if bad:
        c.problem(f"{c.metadata}: rejected draws with keys of no successful sample, or "
                  f"repeated: {', '.join(bad[:5])}")


def check_keys(c: ShardCheck, rows: list[dict]) -> None:
    """Keys are SSSSS + the index in the shard, one row each for 0..count-1."""
    count, successes = c.marker.get("count"), c.marker.get("successes")
    if len(rows) != count:
        c.problem(f"{c.metadata}: {len(rows)} rows, marker counts {count}")
    found = sum(r["status"] == "success" for r in rows)
    if found != successes:
        c.problem(f"{c.metadata}: {found} successful rows, marker counts {successes}")
    keys = [r["key"] for r in rows]
    width = len(keys[0]) - len(c.shard) if keys else 0
    wanted = {f"{c.shard}{i:0{width}d}" for i in range(count or 0)}
    missing, extra = sorted(wanted - set(keys)), sorted(set(keys) - wanted)
    if missing:
        c.problem(f"{c.metadata}: missing keys {', '.join(missing[:5])}"
                  + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
    repeated = sorted(k for k, n in Counter(keys).items() if n > 1)
    if extra or repeated:
        c.problem(f"{c.metadata}: unexpected or repeated keys "
                  f"{', '.join((extra + repeated)[:5])}")
