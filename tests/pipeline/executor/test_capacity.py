"""A cluster with no room: the driver says what it waits for, stops when no node can ever
host an actor, and a rerun resumes once a node that fits has joined."""

import json

import pytest

from pipeline.runner import JobFailed, run_job
from pipeline.spec import build_spec
from tests.conftest import release_shared_ray, write_prompts


@pytest.fixture(scope="module")
def empty_cluster():
    """A head without CPUs (as on KubeRay, `num-cpus: 0`) whose workers never came up."""
    import ray
    from ray.cluster_utils import Cluster

    release_shared_ray()  # this module runs on a cluster of its own
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def test_no_node_that_fits_stops_the_run_and_a_rerun_resumes(empty_cluster, tmp_path):
    src = write_prompts(tmp_path / "p.parquet", [f"prompt {i}" for i in range(6)])
    spec = build_spec({"input": {"path": src}, "model": {"family": "null"},
                       "output": {"path": str(tmp_path / "out")},
                       "generation": {"width": 16, "height": 16},
                       "runtime": {"shard_size": 3, "capacity_timeout_s": 3,
                                   "progress_interval_s": 0.5}})
    with pytest.raises(JobFailed, match=r"no node can host an actor: each needs \{CPU: 1\}, "
                                        r"the cluster has .*\(CPU 0, GPU 0\).*waited 3 s"):
        run_job(spec, show_progress=False)
    progress = json.loads((tmp_path / "out" / "_progress.json").read_text())
    assert progress["state"] == "failed" and "no node can host" in progress["waiting"]
    empty_cluster.add_node(num_cpus=1)  # capacity arrives
    empty_cluster.wait_for_nodes()
    assert run_job(spec, show_progress=False)["successes"] == 6
    progress = json.loads((tmp_path / "out" / "_progress.json").read_text())
    assert progress["state"] == "complete" and progress["waiting"] is None


def test_a_dead_raylet_stops_the_driver_and_a_rerun_resumes(tmp_path):
    """The local raylet dies mid-job (it fate-shares with Ray's dashboard agent): the driver
    says so and exits 1 within a minute instead of waiting forever; a rerun completes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src = write_prompts(tmp_path / "p.parquet", [f"a red circle {i}" for i in range(480)])
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    # a simulated device: 50 ms per image, so the job outlasts the kill by ~20 s anywhere
    job.write_text(f"input: {{path: {src}}}\n"
                   "model: {family: null, options: {device_ms_per_image: 50}}\n"
                   "generation: {width: 32, height: 32}\n"
                   f"output: {{path: {out}}}\n"
                   "runtime: {shard_size: 40, batch_size: 4, progress_interval_s: 0.5}\n")
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(job), "--quiet"]
    driver = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(out.glob("*_stats.json")) and time.time() < deadline:
        time.sleep(0.2)
    raylet = next(pid for pid in _children(driver.pid) if b"raylet/raylet" in _cmdline(pid))
    os.kill(raylet, signal.SIGKILL)
    killed = time.time()
    _, err = driver.communicate(timeout=180)
    assert driver.returncode == 1, err
    assert "the driver's Ray node is gone" in err and "a rerun resumes" in err
    assert time.time() - killed < 90
    kept = len(list(out.glob("*_stats.json")))
    assert 0 < kept < 12
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((out / "_SUCCESS").read_text())["shards_committed"] == 12


def _children(pid: int) -> list[int]:
    import os

    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return b""
