"""A templated nightly job end to end on a real local Ray: labels, reruns, the run lock."""

import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.cli import main
from pipeline.output.lock import lock_name
from pipeline.spec import load_spec

DATE = "2026-11-29"
NIGHTLY = Path(__file__).resolve().parents[2] / "jobs" / "nightly.yaml"


def _job(tmp_path, tiny_gan) -> str:
    """jobs/nightly.yaml with the tiny GAN, a few prompts and a temporary output."""
    spec = (NIGHTLY.read_text(encoding="utf-8")
            .replace("count: 256", "count: 7")
            .replace("family: gan", f"family: gan\n  path: {tiny_gan}")
            .replace("./out/nightly/{run_id}", f"{tmp_path}/out/{{run_id}}")
            .replace("shard_size: 64", "shard_size: 4\n  progress_interval_s: 0.2"))
    path = tmp_path / "nightly.yaml"
    path.write_text(spec)
    return str(path)


def _snapshot(folder) -> dict:
    return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files}


def test_nightly_template_job_runs_once_per_date(ray_local, tmp_path, tiny_gan, capsys):
    job = _job(tmp_path, tiny_gan)
    assert main(["plan", job, "--date", DATE]) == 0
    assert "a template, 7 prompts, 7 images, 2 shards of 4" in capsys.readouterr().out
    assert main(["run", job, "--date", DATE, "--quiet"]) == 0
    out = tmp_path / "out" / f"nightly-{DATE}"
    rows = pq.read_table(out / "00000.parquet").to_pylist() + \
        pq.read_table(out / "00001.parquet").to_pylist()
    assert len(rows) == 7 and len({r["prompt"] for r in rows}) == 7
    for r in rows:  # every slot is a label column that agrees with the prompt
        assert r["prompt"] == (f"a {r['size']} {r['colour']} {r['shape']} {r['position']} "
                               f"on a {r['background']} background")
        assert r["colour"] != r["background"] and r["status"] == "success"
    assert rows[0]["id"] == "template#0"
    before = _snapshot(out)
    assert main(["run", job, "--date", DATE, "--quiet"]) == 0  # the same date again
    assert _snapshot(out) == before  # nothing rewritten, nothing duplicated
    job_json = json.loads((out / "_job.json").read_text())
    assert job_json["spec"]["generation"]["seed"] == 20261129

    assert main(["run", job, "--date", "2026-11-30", "--quiet"]) == 0
    other = pq.read_table(tmp_path / "out" / "nightly-2026-11-30" / "00000.parquet")
    assert other.column("prompt").to_pylist() != [r["prompt"] for r in rows[:4]]


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(ray_local, tmp_path, tiny_gan,
                                                         capsys):
    job = _job(tmp_path, tiny_gan)
    out = tmp_path / "out" / f"nightly-{DATE}"
    out.mkdir(parents=True)
    lock = {"owner": "other", "run": "nightly", "host": "node-7", "pid": 42,
            "heartbeat_at": time.time()}
    (out / lock_name(0)).write_text(json.dumps(lock))
    assert main(["run", job, "--date", DATE, "--quiet"]) == 3
    assert "being written by run 'nightly' on node-7" in capsys.readouterr().err
    assert not (out / "_SUCCESS").exists()
    (out / lock_name(0)).write_text(json.dumps({**lock, "heartbeat_at": time.time() - 120}))
    assert main(["run", job, "--date", DATE, "--quiet", "--set",
                 "runtime.lock_timeout_s=60"]) == 0
    assert (out / "_SUCCESS").exists()
    assert not [n for n in os.listdir(out) if n.startswith("_lock.")]
    # the lock timeout is a runtime knob: it does not change what the output contains
    assert load_spec(job, ["runtime.lock_timeout_s=5"], DATE).fingerprint() == \
        load_spec(job, [], DATE).fingerprint()
