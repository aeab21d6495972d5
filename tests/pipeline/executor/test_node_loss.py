"""Losing a worker node mid-job on a multi-node cluster built on one machine."""

import logging
import time

import pytest

from pipeline.runner import run_job
from tests.conftest import release_shared_ray, write_prompts
from tests.pipeline.executor.test_faults import (
    PROMPTS,
    _assert_same_dataset,
    _spec,
    _when_first_marker,
)


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    release_shared_ray()  # this module runs on a cluster of its own
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [c.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]  # logical GPUs
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()


def test_node_removed_mid_job_moves_its_shards(cluster, tmp_path, tiny_gan, caplog):
    c, workers = cluster
    # enough work that both actors are busy long after both have loaded their model, even
    # when another test module's jobs share the machine's two cores (make test's workers):
    # with a fifth of it the first actor once finished the job alone
    src = write_prompts(tmp_path / "p.parquet", PROMPTS * 25)
    removed = []

    def remove_once_both_actors_work():
        while caplog.text.count(" ready: ") < 2:
            time.sleep(0.05)
        c.remove_node(workers[0])
        removed.append(workers[0])

    _when_first_marker(tmp_path / "out", remove_once_both_actors_work)
    with caplog.at_level(logging.INFO, logger="synthset"):
        run_job(_spec(tmp_path, src, tiny_gan, actors="auto", shard_size=24),
                show_progress=False)
    assert removed and "lost" in caplog.text
    assert "'num_gpus': 1" in caplog.text  # one logical GPU pinned per actor
    # the same images as a run that lost nothing, each key exactly once
    run_job(_spec(tmp_path, src, tiny_gan, out="ref", actors=1, shard_size=24),
            show_progress=False)
    _assert_same_dataset(tmp_path / "ref", tmp_path / "out")


def test_gpu_actors_reserve_their_share_of_a_gpu_nodes_cpus():
    from pipeline.executor.capacity import cpus_per_gpu

    # a CPU-only head node does not count; the tightest GPU node decides
    assert cpus_per_gpu([{"CPU": 8}, {"CPU": 16, "GPU": 1}, {"CPU": 96, "GPU": 8}]) == 12
    assert cpus_per_gpu([{"CPU": 1, "GPU": 1}, {"CPU": 1, "GPU": 1}]) == 1
    assert cpus_per_gpu([{"CPU": 4, "GPU": 8}]) == 1  # never zero
