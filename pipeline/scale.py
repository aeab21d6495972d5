"""``synthset bench --markers N``: the driver's bookkeeping at N committed shards.

A 100,000,000-prompt job at the default shard size has 100,000 shards. This writes a job
of that size (a template input, so the plan is the real one) and N committed markers
straight into a folder, local or on a moto S3 server, without generating anything, then
times what the driver does with them: a rerun's resume scan, ``synthset status``,
``verify``'s planning (listing, markers, manifest), the ``_SUCCESS`` write, and the
rerun of a complete job. Each step reports wall time, the driver's peak RSS during
it, and what it wrote.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.output.layout import marker_name, metadata_name
from pipeline.output.storage import OutputFolder, json_bytes
from pipeline.spec import JobSpec, build_spec

SHARD_SIZE = 1000


def scale_spec(shards: int, output: str, options: dict | None = None) -> JobSpec:
    """A null-generator job of ``shards`` × 1,000 template prompts (webdataset, JPEG)."""
    return build_spec({
        "name": "scale", "model": {"family": "null"},
        "input": {"template": {"text": "a {color} {thing}", "mode": "sample",
                               "count": shards * SHARD_SIZE, "dedupe": False,
                               "slots": {"color": ["red", "green", "blue"],
                                         "thing": ["cube", "ball", "cone"]}}},
        "generation": {"width": 512, "height": 512},
        "output": {"path": output, "format": "webdataset", "image_format": "jpeg"},
        "runtime": {"shard_size": SHARD_SIZE}, "storage_options": options or {}})


def fake_marker(name: str, shard_id: int) -> dict[str, Any]:
    """A marker shaped like a real webdataset shard's (same keys, realistic sizes)."""
    sha = [hashlib.sha256(f"{name}/{k}".encode()).hexdigest() for k in ("tar", "parquet")]
    now = time.time()
    return {
        "shard": shard_id, "shard_name": name, "rows": SHARD_SIZE, "count": SHARD_SIZE,
        "successes": SHARD_SIZE - shard_id % 3, "failed": shard_id % 3,
        "error_counts": {"generation failed: RuntimeError: x": shard_id % 3} if shard_id % 3
        else {}, "truncated": 0, "retries": 0,
        "embedding_cache": {"hits": 0, "misses": SHARD_SIZE},
        "start_time": now - 9.3, "end_time": now, "duration_s": 9.3,
        "stage_seconds": {"read": 0.01, "text_encode": 0.02, "generate": 8.1,
                          "image_encode_and_upload": 7.7, "wait_for_uploads": 0.4,
                          "metadata": 0.03},
        "peak_rss_mb": 812.4, "format": "webdataset",
        "objects": {f"{name}.tar": sha[0], metadata_name(name): sha[1]},
        "uploads": {"objects": 2, "bytes": 61_000_000, "seconds": 0.9},
    }


def write_markers(folder: OutputFolder, names: list[str], threads: int = 16) -> float:
    """Each shard's marker plus two empty stand-ins for its data objects (so that
    listings are as long as a real output's); returns seconds."""
    def one(item: tuple[int, str]) -> None:
        shard_id, name = item
        folder.write_bytes(f"{name}.tar", b"")
        folder.write_bytes(metadata_name(name), b"")
        folder.write_bytes(marker_name(name), json_bytes(fake_marker(name, shard_id)))
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, enumerate(names)))
    return time.perf_counter() - start


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident set of this process in MB, from /proc."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                fields[line.split(":")[0]] = int(line.split()[1]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def measure(what: str, fn: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
    """Run ``fn`` once: wall seconds and the driver's RSS before and at its peak."""
    _reset_peak()
    before = _rss_mb()[0]
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return {"step": what, "seconds": seconds, "rss_before_mb": before,
            "rss_peak_mb": _rss_mb()[1]}, result


def verify_planning(folder: OutputFolder) -> Any:
    """What ``verify`` does before it opens any shard's data: list, read markers, check
    them against ``_SUCCESS``."""
    from pipeline.output.verify import Report, check_manifest, committed_markers

    report = Report(folder.display())
    listing, markers = committed_markers(folder)
    check_manifest(folder, folder.read_json("_job.json"), markers, report)
    return report


def _size(folder: OutputFolder, names: tuple[str, ...]) -> int:
    found = folder.find()
    return sum(found.get(n, 0) for n in names)


def run_scale(shards: int, url: str, options: dict | None = None) -> list[dict[str, Any]]:
    """Write a ``shards``-shard job with every marker committed under ``url``; time the
    driver's steps on it. Returns one row per step."""
    from pipeline.output.layout import JOB, LOCK_PREFIX, MANIFEST, SUCCESS
    from pipeline.output.manifest import Ledger
    from pipeline.output.progress import committed_shards, read_status
    from pipeline.output.retry import drop_success
    from pipeline.runner import _pending, claim_output, make_plan, run_job, write_success

    spec = scale_spec(shards, url, options)
    folder = OutputFolder(url, options)
    rows, plan = [], None

    def step(what: str, fn: Callable[[], Any]) -> Any:
        row, result = measure(what, fn)
        rows.append(row)
        return result

    plan = step("plan", lambda: make_plan(spec))
    names = [plan.keys.shard_name(i) for i in range(shards)]
    job = folder.read_json(JOB)
    if job and job["fingerprint"] == plan.fingerprint and \
            len(committed_shards(folder)) == shards:
        drop_success(folder)  # written by an earlier measurement: reuse its markers
    else:
        claim_output(folder, plan, overwrite=True)
        rows.append({"step": f"write {shards:,} markers (+2 objects each)",
                     "seconds": write_markers(folder, names)})
    pending = step("resume scan (rerun, nothing pending)",
                   lambda: _pending(plan, folder, False))[0]
    if pending:
        raise RuntimeError(f"{len(pending)} shards pending after committing all of them")
    step("lock heartbeat's listing (_lock.*)", lambda: folder.list(LOCK_PREFIX))
    status = step("status (running)", lambda: read_status(folder))
    assert status["shards_done"] == shards, status
    ledger = Ledger(folder, [])
    for i, name in enumerate(names):  # what the executor hands over as shards commit
        ledger.add(fake_marker(name, i))
    step("_SUCCESS write (end of a run: markers known)",
         lambda: write_success(folder, plan, ledger=ledger))
    rows[-1]["bytes"] = _size(folder, (SUCCESS, MANIFEST))
    ledger = None  # its entries are the driver's to free once _SUCCESS is written
    step("_SUCCESS write (reading every marker)", lambda: write_success(folder, plan))
    rows[-1]["bytes"] = _size(folder, (SUCCESS, MANIFEST))
    step("status (complete)", lambda: read_status(folder))
    report = step("verify planning", lambda: verify_planning(folder))
    if not report.ok:
        raise RuntimeError(report.format())
    step("rerun of the complete job", lambda: run_job(spec, show_progress=False))
    return rows


def format_scale(shards: int, where: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"driver at {shards:,} committed shards ({where}); RSS of this process",
             f"  {'step':<48}{'seconds':>9}{'RSS before MB':>15}{'RSS peak MB':>13}"
             f"{'bytes written':>15}"]
    for r in rows:
        lines.append(f"  {r['step']:<48}{r['seconds']:>9.2f}{r.get('rss_before_mb', 0):>15.0f}"
                     f"{r.get('rss_peak_mb', 0):>13.0f}"
                     + (f"{r['bytes']:>15,}" if "bytes" in r else ""))
    return "\n".join(lines)


def scale_report(shards: int, workdir: str | None, on: str = "local") -> str:
    """``--markers N``: the measurement locally, on moto, or both."""
    import tempfile

    workdir = workdir or tempfile.mkdtemp(prefix="synthset-markers-")
    out = []
    if on in ("local", "both"):
        url = os.path.join(workdir, f"markers-{shards}")
        out.append(format_scale(shards, f"local folder {url}", run_scale(shards, url)))
    if on in ("s3", "both"):
        import logging

        from pipeline.bench import with_moto

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request

        out.append(with_moto(lambda options, bucket: format_scale(
            shards, "moto S3 on 127.0.0.1",
            run_scale(shards, f"s3://{bucket}/markers", options))))
    return "\n".join(out)
