"""Stage 1: the next shard's input is read while the current shard generates."""

from __future__ import annotations

import threading

import pyarrow.parquet as pq

import pipeline.stages.read as read_stage
from models.registry import load_model
from pipeline.input.shards import plan_shards
from pipeline.output.storage import OutputFolder
from pipeline.runner import make_plan
from pipeline.spec import build_spec
from pipeline.stages.worker import ShardWorker
from tests.conftest import write_prompts

PROMPTS = [f"prompt {i}" for i in range(12)]


class GatedModel:
    """The null model; the last batch of the first shard waits (up to 10 s) for the
    second shard's read to start, and records whether it did."""

    def __init__(self, read_started: threading.Event):
        self.inner, self.read_started = load_model("null", None), read_started
        self.model_id, self.native_size = "gated", None
        self.calls, self.saw_read = 0, None

    def check_params(self, params):
        self.inner.check_params(params)

    def warmup(self, params):
        pass

    def encode_prompt(self, prompts, negative_prompts=None):
        return self.inner.encode_prompt(prompts)

    def generate(self, embeds, seeds, params):
        self.calls += 1
        if self.calls == 2:  # shard 0 is 2 batches of 2
            self.saw_read = self.read_started.wait(10)
        return self.inner.generate(embeds, seeds, params)


def test_the_next_shard_is_read_before_this_one_finishes_generating(tmp_path, monkeypatch):
    reads, started = [], threading.Event()
    original = read_stage.read_rows

    def recording(shard, options, timings):
        reads.append((shard.id, threading.current_thread().name))
        if shard.id == 1:
            started.set()
        return original(shard, options, timings)
    monkeypatch.setattr(read_stage, "read_rows", recording)
    src = write_prompts(tmp_path / "p.parquet", PROMPTS)
    out = str(tmp_path / "out")
    spec = build_spec({"input": {"path": src}, "model": {"family": "null"},
                       "output": {"path": out}, "runtime": {"batch_size": 2, "shard_size": 4}})
    plan = make_plan(spec)
    model = GatedModel(started)
    worker = ShardWorker(spec, model, plan.keys, OutputFolder(out), deterministic=False)
    s0, s1, s2 = plan_shards(plan.inputs, 4)
    first = worker.start(s0, upcoming=s1)
    second = worker.start(s1, upcoming=s0)  # a promise not kept: s2 comes instead
    third = worker.start(s2)
    assert [f.result()["successes"] for f in (first, second, third)] == [4, 4, 4]
    assert model.saw_read is True  # shard 1's read began while shard 0 generated
    assert reads[0] == (0, "MainThread") and reads[1][0] == 1
    assert reads[1][1].startswith("synthset-read")
    assert [r[0] for r in reads].count(1) == 1  # read once, ahead, and used
    assert reads[-1] == (2, "MainThread")  # a shard other than the one promised: read now
    for shard, name in ((1, "00001"), (2, "00002")):
        rows = pq.read_table(f"{out}/{name}.parquet").to_pylist()
        assert [r["prompt"] for r in rows] == PROMPTS[4 * shard:4 * shard + 4]
