"""Poison samples and malformed rows are quarantined in-process; the rest of the shard commits."""

import json
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.registry import load_model
from pipeline.input.shards import plan_shards
from pipeline.output.storage import OutputFolder
from pipeline.runner import make_plan
from pipeline.spec import build_spec
from pipeline.stages.worker import ShardWorker


class PoisonedModel:
    """Wraps a real model: raises on 'POISON', draws a black frame for 'BLANK'."""

    def __init__(self, model):
        self.inner = model
        self.model_id, self.native_size = model.model_id, model.native_size
        self.generate_calls = []

    def check_params(self, params):
        self.inner.check_params(params)

    def warmup(self, params):
        self.inner.warmup(params)

    def encode_prompt(self, prompts, negative_prompts=None):
        if any("ENCODER-BOOM" in p for p in prompts):
            raise RuntimeError("encoder exploded")
        return self.inner.encode_prompt(prompts, negative_prompts)

    def generate(self, embeds, seeds, params):
        self.generate_calls.append(len(seeds))
        images = self.inner.generate(embeds, seeds, params)
        if any(s == self.poison_seed for s in seeds):
            raise ValueError("NaN in latents")
        return np.where(np.array([s == self.blank_seed for s in seeds])[:, None, None, None],
                        0, images).astype(np.uint8)


@pytest.fixture
def run_shard(tmp_path, tiny_gan):
    def run(prompts, **extra_columns):
        src = tmp_path / "p.parquet"
        pq.write_table(pa.table({"prompt": pa.array(prompts, pa.string()), **extra_columns}),
                       src)
        spec = build_spec({"input": {"path": str(src), "id_column": "id"},
                           "model": {"path": tiny_gan},
                           "output": {"path": str(tmp_path / "out")},
                           "runtime": {"batch_size": 4, "shard_size": 100}})
        plan = make_plan(spec)
        model = PoisonedModel(load_model("gan", tiny_gan))
        shard = next(iter(plan_shards(plan.inputs, 100)))
        from pipeline.stages.samples import build_samples
        seeds = [s.seed for s in build_samples(next(iter(shard.segments)).read({})
                                               .__next__(), shard, spec, plan.keys)]
        model.poison_seed, model.blank_seed = seeds[1], seeds[2]
        worker = ShardWorker(spec, model, plan.keys, OutputFolder(str(tmp_path / "out")),
                             deterministic=False)
        stats = worker.run(shard)
        rows = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
        return stats, rows, model
    return run


def test_poison_and_blank_samples_are_isolated(run_shard, tmp_path):
    prompts = [f"a small red circle on the left on a blue background {i}" for i in range(6)]
    stats, rows, model = run_shard(prompts, id=[f"s{i}" for i in range(6)])
    by_id = {r["id"]: r for r in rows}
    assert by_id["s1"]["status"] == "error" and "NaN in latents" in by_id["s1"]["error_message"]
    assert by_id["s2"]["status"] == "error" and "blank" in by_id["s2"]["error_message"]
    ok = [r for r in rows if r["id"] not in ("s1", "s2")]
    assert all(r["status"] == "success" and (tmp_path / "out" / r["file"]).exists() for r in ok)
    assert stats["successes"] == 4 and stats["failed"] == 2
    assert model.generate_calls[:1] == [4] and 1 in model.generate_calls  # then one by one
    assert json.loads((tmp_path / "out" / "00000_stats.json").read_text())["failed"] == 2


def test_malformed_rows_are_quarantined_with_a_status(run_shard):
    prompts = [None, "", "   \t", "0", "42", "卡通风格的人物", "مرحبا بالعالم 🎨",
               "ctrl\x00chars\x07here", "ENCODER-BOOM", "fine", "last"]
    ids = [f"r{i}" for i in range(11)]
    _, rows, _ = run_shard(prompts, id=ids)
    status = {r["key"]: (r["status"], r["error_message"], r["prompt"]) for r in rows}
    values = list(status.values())
    assert values[0][:2] == ("error", "prompt is null")
    assert values[1][1] == values[2][1] == "prompt is empty or whitespace only"
    assert values[3][2] == "0" and values[4][2] == "42"  # numeric-looking prompts stay text
    assert values[5][0] == values[6][0] == "success"
    assert values[7] == ("success", None, "ctrl chars here")
    assert values[8][0] == "error" and "encoder exploded" in values[8][1]
    assert values[9][0] == "success"
    assert values[10][0] == "success" and len(values) == 11



def test_a_slow_commit_overlaps_the_next_shards_generation(tmp_path, tiny_gan, s3_bucket):
    """Shard 0's Parquet PUT is held on the wire: shard 1 still generates to the end, then
    waits (one commit outstanding at most). Both commits land once the PUT goes through."""
    from tests.conftest import write_prompts
    from tests.faultproxy import FaultProxy

    bucket, options = s3_bucket
    src = write_prompts(tmp_path / "p.parquet", [f"a red circle number {i}" for i in range(8)])
    proxy = FaultProxy(options["endpoint_url"])
    try:
        spec = build_spec({"input": {"path": src}, "model": {"path": tiny_gan},
                           "output": {"path": f"s3://{bucket}/slow", "format": "parquet"},
                           "runtime": {"batch_size": 2, "shard_size": 4},
                           "storage_options": {"endpoint_url": proxy.url}})
        plan = make_plan(spec)
        shards = list(plan_shards(plan.inputs, 4))
        proxy.hold["/slow/00000.parquet"] = release = threading.Event()
        worker = ShardWorker(spec, load_model("gan", tiny_gan), plan.keys,
                             OutputFolder(spec.output.path, spec.storage_options), True)
        first = worker.start(shards[0])
        drawn, started = [], []
        second = threading.Thread(target=lambda: started.append(
            worker.start(shards[1], lambda done, failed: drawn.append(done))))
        second.start()
        deadline = time.time() + 60
        while sum(drawn) < 4 and time.time() < deadline:
            time.sleep(0.05)
        assert sum(drawn) == 4  # shard 1 fully drawn...
        assert not first.done() and second.is_alive()  # ...while shard 0 still commits
        release.set()
        second.join(60)
        assert first.result()["successes"] == 4 and started[0].result()["successes"] == 4
    finally:
        proxy.close()
    folder = OutputFolder(spec.output.path, options)
    for name in ("00000", "00001"):
        marker = folder.read_json(f"{name}_stats.json")
        rows = pq.read_table(folder.open(f"{name}.parquet"), columns=["sha256"]).to_pylist()
        assert marker["successes"] == 4 and all(r["sha256"] for r in rows)


def test_a_committed_shard_sent_again_is_not_drawn_again(tmp_path, tiny_gan):
    """A retried shard whose commit landed (its result lost with its actor) costs no GPU."""
    from tests.conftest import write_prompts

    src = write_prompts(tmp_path / "p.parquet", ["a red circle", "a blue square"])
    spec = build_spec({"input": {"path": src}, "model": {"path": tiny_gan},
                       "output": {"path": str(tmp_path / "out")}})
    plan = make_plan(spec)
    shard = next(iter(plan_shards(plan.inputs, spec.runtime.shard_size)))
    model = PoisonedModel(load_model("gan", tiny_gan))
    model.poison_seed = model.blank_seed = None
    worker = ShardWorker(spec, model, plan.keys, OutputFolder(str(tmp_path / "out")), True)
    first = worker.run(shard)
    drawn = len(model.generate_calls)
    assert worker.run(shard) == first and len(model.generate_calls) == drawn > 0
