"""``synthset verify``: check an output against its manifest, markers and metadata rows.

Every marker's data objects must exist with the sha256 it lists; every successful
row's image must exist with the sha256 of its row (loose files, tar members or
embedded Parquet bytes); every shard must hold exactly the keys its marker counts;
``_SUCCESS`` must agree with the markers; and nothing else may lie in the folder.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections import Counter
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from pipeline.progress import JOB, SUCCESS
from pipeline.storage import OutputFolder, StorageError
from pipeline.writers import file_sha256, marker_name

MARKER_SUFFIX = marker_name("")


@dataclass
class Report:
    """What verify found: counts of what it checked and one line per problem."""

    output: str
    shards: int = 0
    images: int = 0
    failed_rows: int = 0
    objects: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, limit: int = 50) -> str:
        head = (f"{'OK' if self.ok else 'FAILED'} {self.output}: {self.shards} shards, "
                f"{self.images} images, {self.failed_rows} failed rows; {self.objects} objects "
                f"({self.bytes / 2**20:.1f} MiB) checked")
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
    listing = folder.find()
    markers = {n[: -len(MARKER_SUFFIX)]: folder.read_json(n)
               for n in listing if n.endswith(MARKER_SUFFIX) and "/" not in n}
    expected = set()
    check_manifest(folder, job, markers, report)
    fmt = job["spec"]["output"]["format"]
    for shard, marker in sorted(markers.items()):
        expected.add(marker_name(shard))
        expected |= check_shard(ShardCheck(folder, fmt, shard, marker, listing, report))
    for name in sorted(set(listing) - expected):
        if (name.startswith("_") or name in ("report.html", "report.png")) and "/" not in name:
            continue  # job bookkeeping (_job.json, _progress.json, a run's _lock.*), a report
        report.problems.append(f"{name}: orphan object, not listed by any marker or metadata row")
    return report


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
    listed = {s["shard_name"]: s for s in manifest["shards"]}
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


@dataclass
class ShardCheck:
    """One committed shard being checked."""

    folder: OutputFolder
    format: str
    shard: str
    marker: dict
    listing: dict[str, int]
    report: Report

    def problem(self, text: str) -> None:
        self.report.problems.append(text)

    def sha256(self, name: str) -> str | None:
        """sha256 of object ``name``, or None (and a problem) if it cannot be read."""
        def read() -> str:
            with self.folder.open(name) as f:
                return file_sha256(f)
        try:
            digest = self.folder.call("reading", name, read)
        except StorageError as e:
            self.problem(f"{name}: unreadable ({e})")
            return None
        self.report.objects += 1
        self.report.bytes += self.listing.get(name, 0)
        return digest


def check_shard(c: ShardCheck) -> set[str]:
    """Check one shard; returns the names of the objects it accounts for."""
    objects = c.marker.get("objects") or {}
    for name, want in sorted(objects.items()):
        if name not in c.listing:
            c.problem(f"{name}: missing (listed in {marker_name(c.shard)})")
        elif (got := c.sha256(name)) is not None and got != want:
            c.problem(f"{name}: sha256 mismatch (marker {marker_name(c.shard)} says "
                      f"{want[:12]}…, object has {got[:12]}…)")
    metadata = f"{c.shard}.parquet"
    if metadata not in c.listing:
        return set(objects)  # already reported as missing
    rows = read_rows(c, metadata)
    if rows is None:
        return set(objects)
    check_keys(c, rows)
    images = {r["key"]: r for r in rows if r["status"] == "success"}
    c.report.images += len(images)
    c.report.failed_rows += len(rows) - len(images)
    checkers = {"files": check_files, "webdataset": check_tar, "parquet": check_embedded}
    return set(objects) | checkers[c.format](c, images)


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


def check_keys(c: ShardCheck, rows: list[dict]) -> None:
    """Keys are SSSSS + the index in the shard, one row each for 0..count-1."""
    count, successes = c.marker.get("count"), c.marker.get("successes")
    if len(rows) != count:
        c.problem(f"{c.shard}.parquet: {len(rows)} rows, marker counts {count}")
    found = sum(r["status"] == "success" for r in rows)
    if found != successes:
        c.problem(f"{c.shard}.parquet: {found} successful rows, marker counts {successes}")
    keys = [r["key"] for r in rows]
    width = len(keys[0]) - len(c.shard) if keys else 0
    wanted = {f"{c.shard}{i:0{width}d}" for i in range(count or 0)}
    missing, extra = sorted(wanted - set(keys)), sorted(set(keys) - wanted)
    if missing:
        c.problem(f"{c.shard}.parquet: missing keys {', '.join(missing[:5])}"
                  + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
    repeated = sorted(k for k, n in Counter(keys).items() if n > 1)
    if extra or repeated:
        c.problem(f"{c.shard}.parquet: unexpected or repeated keys "
                  f"{', '.join((extra + repeated)[:5])}")

def check_files(c: ShardCheck, images: dict[str, dict]) -> set[str]:
    """``files``: each successful row's image object exists with the row's sha256."""
    for key, row in images.items():
        name = row["file"]
        if name not in c.listing:
            c.problem(f"{name}: missing image for key {key} (row in {c.shard}.parquet)")
        elif (got := c.sha256(name)) is not None and got != row["sha256"]:
            c.problem(f"{name}: sha256 mismatch with its row in {c.shard}.parquet "
                      f"(key {key})")
    return {r["file"] for r in images.values() if r["file"]}


def check_tar(c: ShardCheck, images: dict[str, dict]) -> set[str]:
    """``webdataset``: the tar holds image, json and txt for exactly the successful keys."""
    name = f"{c.shard}.tar"
    if name not in c.listing:
        return set()  # reported against the marker
    members: dict[str, dict[str, str]] = {}

    def scan() -> None:
        members.clear()
        with c.folder.open(name) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                data = tar.extractfile(info).read() if info.isfile() else b""
                members.setdefault(key, {})[ext] = hashlib.sha256(data).hexdigest()
    try:
        c.folder.call("reading", name, scan)
    except (StorageError, tarfile.TarError) as e:
        c.problem(f"{name}: unreadable tar ({type(e).__name__}: {str(e)[:200]})")
        return set()
    for key, row in images.items():
        got = members.pop(key, {})
        ext = row["file"].rsplit(".", 1)[-1] if row["file"] else ""
        if set(got) != {ext, "json", "txt"}:
            c.problem(f"{name}: key {key} has members {sorted(got) or 'none'}, "
                      f"expected {ext}, json, txt")
        elif got[ext] != row["sha256"]:
            c.problem(f"{name}: member {key}.{ext} sha256 mismatch with its row in "
                      f"{c.shard}.parquet")
    for key in sorted(members):
        c.problem(f"{name}: members for key {key}, which has no successful row")
    return set()


def check_embedded(c: ShardCheck, images: dict[str, dict]) -> set[str]:
    """``parquet``: each successful row embeds image bytes with the row's sha256."""
    name = f"{c.shard}.parquet"

    def scan() -> dict[str, str | None]:
        found = {}
        with c.folder.open(name) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=64,
                                                        columns=["key", "image"]):
                for key, image in zip(batch["key"].to_pylist(), batch["image"].to_pylist()):
                    found[key] = hashlib.sha256(image["bytes"]).hexdigest() \
                        if image and image["bytes"] is not None else None
        return found
    try:
        found = c.folder.call("reading", name, scan)
    except Exception as e:
        c.problem(f"{name}: cannot read its image column ({type(e).__name__}: {str(e)[:200]})")
        return set()
    for key, row in images.items():
        if found.get(key) is None:
            c.problem(f"{name}: successful key {key} has no image bytes")
        elif found[key] != row["sha256"]:
            c.problem(f"{name}: image of key {key} sha256 mismatch with its row")
    return set()
