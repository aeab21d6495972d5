"""A cluster with no room: the driver says what it waits for, stops when no node can ever
host an actor, and a rerun resumes once a node that fits has joined."""

import json

import pytest

from pipeline.runner import JobFailed, run_job
from pipeline.spec import build_spec
from tests.conftest import write_prompts


@pytest.fixture(scope="module")
def empty_cluster():
    """A head without CPUs (as on KubeRay, `num-cpus: 0`) whose workers never came up."""
    import ray
    from ray.cluster_utils import Cluster

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
