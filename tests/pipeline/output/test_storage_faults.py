"""Jobs against a real S3 server (moto) behind a fault-injecting proxy on loopback.

About 20% of requests fail (503 SlowDown, 500, a reset before or after the server acted)
and the dataset comes out identical to a fault-free run; a persistent outage stops the
job with an error naming the URL, keeps committed shards valid, and a rerun completes.
"""

import hashlib
import io
import json
import tarfile
import time

import pyarrow.parquet as pq
import pytest
import s3fs

from pipeline.output.manifest import read_entries
from pipeline.output.storage import OutputFolder
from pipeline.output.verify import verify_output
from pipeline.runner import JobFailed, run_job
from pipeline.spec import build_spec
from tests.conftest import write_prompts
from tests.faultproxy import FAULTS, FaultProxy

PROMPTS = [f"a large green circle in the middle on a white background, take {i}"
           for i in range(12)]
BUCKET = "faults"


@pytest.fixture(scope="module")
def env(ray_local, s3_endpoint, tiny_gan, tmp_path_factory):
    """Input on S3 and locally, a proxy in front of moto, and a fault-free reference run."""
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.mkdir(BUCKET)
    local = write_prompts(tmp_path_factory.mktemp("in") / "p.parquet", PROMPTS)
    fs.put(local, f"{BUCKET}/in/p.parquet")
    proxy = FaultProxy(s3_endpoint, seed=7)
    env = {"fs": fs, "local": local, "proxy": proxy, "endpoint": s3_endpoint, "gan": tiny_gan}
    run_job(_spec(env, "reference", s3_endpoint), show_progress=False)
    env["reference"] = _images(fs, "reference")
    yield env
    proxy.close()


def _spec(env, out, endpoint, input_path=f"s3://{BUCKET}/in/p.parquet", **runtime):
    return build_spec({
        "input": {"path": input_path}, "model": {"family": "gan", "path": env["gan"]},
        "output": {"path": f"s3://{BUCKET}/{out}", "format": "webdataset", "retries": 6,
                   "retry_backoff_s": 0.01},
        "runtime": {"shard_size": 4, "batch_size": 4, "actors": 1, "max_shard_attempts": 2,
                    "progress_interval_s": 0.2, **runtime},
        "storage_options": {"endpoint_url": endpoint}})


def _images(fs, out) -> dict[str, str]:
    """sha256 per key, read from the tar members themselves."""
    result = {}
    for tar in sorted(p for p in fs.find(f"{BUCKET}/{out}") if p.endswith(".tar")):
        with tarfile.open(fileobj=io.BytesIO(fs.cat(tar))) as t:
            for m in t.getmembers():
                if m.name.endswith(".png"):
                    result[m.name[:-4]] = hashlib.sha256(t.extractfile(m).read()).hexdigest()
    return result


def _entries(env, out, manifest) -> list[dict]:
    folder = OutputFolder(f"s3://{BUCKET}/{out}", {"endpoint_url": env["endpoint"]})
    return read_entries(folder, manifest)


def _verify(env, out):
    return verify_output(OutputFolder(f"s3://{BUCKET}/{out}", {"endpoint_url": env["endpoint"]}))


def test_twenty_percent_faults_leave_the_dataset_identical(env):
    proxy = env["proxy"]
    proxy.rate, proxy.first_put_fails = 0.2, ".tar"  # plus one sure retry per shard
    try:
        manifest = run_job(_spec(env, "faulty", proxy.url), show_progress=False)
    finally:
        proxy.rate, proxy.first_put_fails = 0.0, None
    assert manifest["successes"] == 12
    assert _images(env["fs"], "faulty") == env["reference"]
    entries = _entries(env, "faulty", manifest)
    reference = _entries(env, "reference",
                         json.loads(env["fs"].cat(f"{BUCKET}/reference/_SUCCESS")))
    assert [s["objects"] for s in entries] == \
        [s["objects"] for s in reference]  # byte-identical tars and Parquet
    assert all(proxy.faults[f] > 0 for f in FAULTS), proxy.faults
    assert proxy.faults.total() >= 0.1 * proxy.requests
    markers = [json.loads(env["fs"].cat(f"{BUCKET}/faulty/{s['shard_name']}_stats.json"))
               for s in entries]
    assert all(m["retries"] >= 1 for m in markers)  # counted per shard, in its stats
    report = _verify(env, "faulty")
    assert report.ok, report.format()


def test_outage_stops_the_job_and_a_rerun_completes_it(env):
    proxy, fs = env["proxy"], env["fs"]
    # the failed run cannot delete its lock object in the outage: let it go stale quickly
    spec = _spec(env, "outage", proxy.url, input_path=env["local"], lock_timeout_s=2,
                 max_shard_attempts=1)
    proxy.trip_on = "/00000_stats.json"  # the store goes down once shard 0 is committed
    try:
        with pytest.raises(JobFailed, match=rf"s3://{BUCKET}/outage/\S+ failed after 7 attempts"):
            run_job(spec, show_progress=False)
    finally:
        proxy.outage, proxy.trip_on = None, None
    marker = fs.cat(f"{BUCKET}/outage/00000_stats.json")
    report = _verify(env, "outage")  # shard 0 is whole; only the missing rest is reported
    assert report.problems == ["1 of 3 shards are committed (markers)",
                               "_SUCCESS is missing: the job has not completed"]
    assert report.images == 4
    time.sleep(2)
    manifest = run_job(spec, show_progress=False)
    assert manifest["successes"] == 12
    assert fs.cat(f"{BUCKET}/outage/00000_stats.json") == marker  # not redone
    assert _images(fs, "outage") == env["reference"]
    assert _verify(env, "outage").ok
    rows = pq.read_table(f"{BUCKET}/outage/00001.parquet", filesystem=fs).to_pylist()
    assert [r["status"] for r in rows] == ["success"] * 4
