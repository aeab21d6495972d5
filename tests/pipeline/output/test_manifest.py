"""The job manifest at scale: ``_SUCCESS`` a small summary, ``_manifest.pq`` beside it."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from pipeline.output.layout import MANIFEST, SUCCESS
from pipeline.output.manifest import Ledger, read_entries
from pipeline.output.progress import read_status
from pipeline.output.storage import OutputFolder, json_bytes
from pipeline.runner import _pending, make_plan
from pipeline.scale import fake_marker, run_scale, scale_spec, verify_planning

SHARDS = 300


def test_a_job_of_many_shards_resumes_reports_and_completes_from_markers(tmp_path):
    url = str(tmp_path / "out")
    rows = {r["step"]: r for r in run_scale(SHARDS, url)}
    assert "resume scan (rerun, nothing pending)" in rows and "verify planning" in rows
    success = json.loads((tmp_path / "out" / SUCCESS).read_text())
    assert "shards" not in success and success["shards_committed"] == SHARDS
    assert len((tmp_path / "out" / SUCCESS).read_bytes()) < 4096  # a summary, not a list
    want = [fake_marker(f"{i:05d}", i) for i in range(SHARDS)]
    assert success["successes"] == sum(m["successes"] for m in want)
    assert success["failed"] == sum(m["failed"] for m in want) > 0
    table = pq.read_table(tmp_path / "out" / MANIFEST)
    assert table.column("shard_name").to_pylist() == [m["shard_name"] for m in want]
    entries = read_entries(OutputFolder(url), success)
    assert [e["objects"] for e in entries] == [m["objects"] for m in want]
    assert rows["_SUCCESS write (reading every marker)"]["bytes"] == len(
        (tmp_path / "out" / SUCCESS).read_bytes()) + success["manifest"]["bytes"]
    status = read_status(OutputFolder(url))
    assert status["state"] == "complete" and status["shards_done"] == SHARDS
    assert status["images_failed"] == success["failed"]


def test_verify_reads_both_layouts_and_catches_a_changed_manifest(tmp_path):
    url = str(tmp_path / "out")
    run_scale(20, url)
    folder = OutputFolder(url)
    assert verify_planning(folder).ok
    success = folder.read_json(SUCCESS)
    old = {k: v for k, v in success.items() if k not in ("manifest", "shards_committed")}
    old["shards"] = read_entries(folder, success)  # the layout before _manifest.pq
    folder.write_json(SUCCESS, old)
    assert verify_planning(folder).ok
    old["shards"][3]["objects"] = {"00003.tar": "0" * 64}
    folder.write_json(SUCCESS, old)
    assert verify_planning(folder).problems == [
        "_SUCCESS disagrees with 00003_stats.json on counts or checksums"]
    folder.write_json(SUCCESS, success)
    folder.write_bytes(MANIFEST, folder.read_bytes(MANIFEST) + b" ")
    problems = verify_planning(folder).problems
    assert problems == ["_manifest.pq: sha256 differs from the one _SUCCESS records"]


def test_resume_lists_names_and_the_ledger_reads_earlier_markers_behind_it(tmp_path):
    url = str(tmp_path / "out")
    folder = OutputFolder(url)
    plan = make_plan(scale_spec(10, url))
    for i in range(0, 10, 2):  # every other shard committed by an earlier run
        folder.write_bytes(f"{i:05d}_stats.json", json_bytes(fake_marker(f"{i:05d}", i)))
    pending, earlier, images = _pending(plan, folder, False)
    assert [s.id for s in pending] == [1, 3, 5, 7, 9]
    assert earlier == ["00000", "00002", "00004", "00006", "00008"] and images == 5 * 1000
    newer = {**fake_marker("00002", 2), "successes": 1, "failed": 999}
    ledger = Ledger(folder, earlier)
    ledger.add(newer)  # e.g. --retry-failed recommitted it: the newer marker wins
    entries = ledger.entries()
    assert [e["shard_name"] for e in entries] == earlier
    assert entries[1]["failed"] == 999
    alone = Ledger(folder, earlier)
    alone.entries()  # counts for progress, summed as the markers come back
    assert alone.earlier_failed == sum(fake_marker(n, int(n))["failed"] for n in earlier) > 0
