"""Several actors on one node share its CPUs: their store threads add up to its cores."""

import json
import logging
import os

import pytest

from pipeline.executor.capacity import cpu_share
from pipeline.runner import run_job
from pipeline.spec import build_spec
from pipeline.stages.store import store_threads
from tests.conftest import write_prompts


@pytest.mark.parametrize("cpus,actors",
                         [(2, 4), (3, 4), (8, 8), (16, 4), (96, 8), (2, 3), (10, 4), (1, 7)])
def test_the_actors_of_a_node_hold_its_cores_and_no_more(cpus, actors):
    share = cpu_share(cpus, actors)
    threads = [store_threads("webdataset", share, False, k) for k in range(actors)]
    # whole shares: share × actors (10 CPUs, 4 actors: 2 each, 2 left to the rest); fractions:
    # exactly the node's cores
    assert sum(threads) == (cpus // actors * actors if cpus >= actors else cpus)
    assert sum(threads) <= cpus and max(threads) - min(threads) <= 1
    assert share * actors <= cpus  # every actor fits on the node


def test_a_cpu_bound_generator_keeps_a_core_and_files_waits_on_the_network():
    assert store_threads("parquet", 4, True) == 3 and store_threads("parquet", 0.5, True) == 1
    assert store_threads("files", 2, False) == 16


def test_four_actors_on_two_cpus_encode_on_two_threads_in_all(ray_local, tmp_path, caplog):
    src = write_prompts(tmp_path / "p.parquet", [f"prompt {i}" for i in range(320)])
    spec = build_spec({
        "input": {"path": str(src)},
        # 32 s of device time: long enough for all four actors to start on a loaded machine
        "model": {"family": "null", "options": {"device_ms_per_image": 100}},
        "generation": {"width": 64, "height": 64},
        "output": {"path": str(tmp_path / "out"), "format": "webdataset",
                   "image_format": "jpeg"},
        "runtime": {"actors": 4, "shard_size": 8, "batch_size": 4,
                    "progress_interval_s": 0.2}})
    with caplog.at_level(logging.INFO, logger="synthset"):
        manifest = run_job(spec, show_progress=False)
    assert manifest["successes"] == 320
    ready = {}  # pid -> what the actor said when it was ready
    for record in caplog.records:
        if record.getMessage().startswith("actor ") and " ready: " in record.getMessage():
            info = record.args[1]
            ready[info["pid"]] = info
    assert len(ready) == 4, ready  # all four fit on the 2-CPU node (0.5 CPU each)
    assert sorted(i["index"] for i in ready.values()) == [0, 1, 2, 3]
    assert {i["cpus"] for i in ready.values()} == {0.5}
    assert len({i["node"] for i in ready.values()}) == 1
    # two actors with a store thread, two encoding between device batches: 2 in all
    assert sorted(i["store_threads"] for i in ready.values()) == [0, 0, 1, 1]
    assert all(i["store_threads"] == i["index"] % 2 for i in ready.values())
    # the markers record the threads the drawing actor used, matching its ready report
    markers = [json.loads((tmp_path / "out" / n).read_text())
               for n in os.listdir(tmp_path / "out") if n.endswith("_stats.json")]
    assert len(markers) == 40
    for m in markers:
        assert m["actor"]["store_threads"] == ready[m["actor"]["pid"]]["store_threads"]
