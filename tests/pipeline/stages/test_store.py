"""Stages 4-5: the store pool bounds pixel bytes in flight, so large images keep memory flat."""

from __future__ import annotations

import threading

import pyarrow.parquet as pq
import pytest

from models.registry import load_model
from pipeline.input.shards import plan_shards
from pipeline.output.storage import OutputFolder
from pipeline.runner import make_plan
from pipeline.spec import build_spec
from pipeline.stages.store import ByteBudget
from pipeline.stages.worker import ShardWorker
from tests.conftest import write_prompts

SHARDS, PER_SHARD = 20, 8


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.parametrize("size", [1024, 2048])
def test_actor_memory_stays_flat_over_twenty_shards_of_large_images(tmp_path, size):
    src = write_prompts(tmp_path / "p.parquet", [f"p{i}" for i in range(SHARDS * PER_SHARD)])
    out = str(tmp_path / "out")
    spec = build_spec({"input": {"path": src}, "model": {"family": "null"},
                       "generation": {"width": size, "height": size},
                       "output": {"path": out, "format": "webdataset", "image_format": "jpeg"},
                       "runtime": {"batch_size": PER_SHARD, "shard_size": PER_SHARD}})
    plan = make_plan(spec)
    worker = ShardWorker(spec, load_model("null", None), plan.keys, OutputFolder(out),
                         deterministic=False, io_threads=4)
    image = size * size * 3
    # 16 images may wait by count; the byte budget, 6 images here, is the bound that binds
    worker.store.bytes.limit = 6 * image
    rss, futures = [], []
    for shard in plan_shards(plan.inputs, PER_SHARD):
        futures.append(worker.start(shard))
        rss.append(_rss_mb())
    markers = [f.result() for f in futures]
    assert [m["successes"] for m in markers] == [PER_SHARD] * SHARDS
    assert pq.read_table(f"{out}/00019.parquet").num_rows == PER_SHARD
    assert 0 < worker.store.bytes.peak <= 6 * image
    # flat: after the first few shards, memory does not grow with the shard count
    settled = max(rss[:5])
    assert max(rss[5:]) < settled + 2 * image / 2**20 + 32, (size, [round(r) for r in rss])


def test_a_chunk_larger_than_the_budget_goes_through_alone():
    budget = ByteBudget(100)
    budget.take(250)  # nothing held: allowed, or one huge image would never be stored
    waiting = threading.Thread(target=budget.take, args=(10,))
    waiting.start()
    waiting.join(0.2)
    assert waiting.is_alive() and budget.used == 250  # the next one waits for room
    budget.give(250)
    waiting.join(5)
    assert not waiting.is_alive() and budget.used == 10 and budget.peak == 250


def test_store_threads_take_every_core_when_the_generator_waits_on_a_device():
    from models.null import NullImageModel
    from pipeline.stages.store import store_threads

    assert store_threads("webdataset", 8) == 7  # the generating thread computes on a core
    assert store_threads("webdataset", 8, generator_on_cpu=False) == 8
    assert store_threads("files", 2, generator_on_cpu=False) == 16  # PUTs wait on the network
    assert NullImageModel().cpu_bound and not NullImageModel({"device_ms_per_image": 5}).cpu_bound
