"""Failures with nothing lost: actor SIGKILL, stalled actors, start failures, driver crash."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest

from pipeline.runner import JobFailed, run_job
from pipeline.spec import build_spec
from tests.conftest import write_prompts

PROMPTS = [f"a large {c} square at the top on a black background #{i}"
           for i in range(48) for c in ["red"]]


def _spec(tmp_path, src, model, out="out", **kw):
    runtime = {"shard_size": 12, "batch_size": 1, "actors": 1, "progress_interval_s": 0.2,
               **kw}
    return build_spec({"input": {"path": str(src)}, "model": {"path": model},
                       "output": {"path": str(tmp_path / out)}, "runtime": runtime})


def _rows(out) -> dict:
    rows = {}
    for name in sorted(os.listdir(out)):
        if name.endswith(".parquet"):
            for r in pq.read_table(os.path.join(out, name)).to_pylist():
                assert r["key"] not in rows, f"duplicate key {r['key']}"
                rows[r["key"]] = r
    return rows


def _assert_same_dataset(a, b):
    ra, rb = _rows(a), _rows(b)
    assert ra.keys() == rb.keys()
    for key, r in ra.items():
        assert r["status"] == "success" and rb[key]["sha256"] == r["sha256"], key
        assert (b / r["file"]).read_bytes() == (a / r["file"]).read_bytes()


def _actor_pids(ray):
    """Our own actors: descendants of this test process whose title names the actor."""
    parent, cmdline = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
                parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
                cmdline[int(entry)] = open(f"/proc/{entry}/cmdline", "rb").read()
            except OSError:
                continue

    def ours(pid):
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return [p for p, cmd in cmdline.items() if b"GenerationActor" in cmd and ours(p)]


def _markers(out) -> list[str]:
    return [n for n in os.listdir(out) if n.endswith("_stats.json")] if out.exists() else []


def _when_first_marker(out, action):
    """Run ``action`` in a thread as soon as the first shard of ``out`` commits."""
    def watch():
        deadline = time.time() + 120
        while time.time() < deadline:
            if _markers(out):
                return action()
            time.sleep(0.05)
    os.makedirs(out, exist_ok=True)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory, tiny_gan):
    tmp = tmp_path_factory.mktemp("reference")
    src = write_prompts(tmp / "p.parquet", PROMPTS)
    run_job(_spec(tmp, src, tiny_gan), show_progress=False)
    return src, tmp / "out"


def test_actor_killed_mid_job_completes_exactly_once(ray_local, reference, tmp_path, tiny_gan,
                                                     caplog):
    src, ref_out = reference
    out = tmp_path / "out"
    killed = []
    _when_first_marker(out, lambda: killed.extend(
        os.kill(pid, signal.SIGKILL) or pid for pid in _actor_pids(ray_local)))
    with caplog.at_level(logging.WARNING, logger="synthset"):
        run_job(_spec(tmp_path, src, tiny_gan), show_progress=False)
    assert killed, "the actor was never killed"
    assert "lost" in caplog.text
    _assert_same_dataset(ref_out, out)


def test_stalled_actor_is_detected_and_replaced(ray_local, reference, tmp_path, tiny_gan,
                                                caplog):
    src, ref_out = reference
    out = tmp_path / "out"
    stopped = []
    _when_first_marker(out, lambda: stopped.extend(
        os.kill(pid, signal.SIGSTOP) or pid for pid in _actor_pids(ray_local)))
    with caplog.at_level(logging.WARNING, logger="synthset"):
        run_job(_spec(tmp_path, src, tiny_gan, stall_timeout_s=3), show_progress=False)
    for pid in stopped:  # ray.kill already ended them; don't leave stopped processes behind
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert stopped and "stalled" in caplog.text
    _assert_same_dataset(ref_out, out)


def test_actor_start_failures_stop_the_job_with_a_clear_error(ray_local, tmp_path, tiny_gan):
    import shutil

    broken = tmp_path / "broken-gan"
    shutil.copytree(tiny_gan, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    src = write_prompts(tmp_path / "p.parquet", PROMPTS[:4])
    with pytest.raises(JobFailed, match="actors failed to start") as e:
        run_job(_spec(tmp_path, src, str(broken), max_actor_failures=1), show_progress=False)
    assert "committed shards are kept" in str(e.value)


def test_driver_sigkill_then_rerun_resumes_to_an_identical_dataset(reference, tmp_path,
                                                                   tiny_gan):
    src, ref_out = reference
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {{path: {src}}}\nmodel: {{path: {tiny_gan}}}\n"
                   f"output: {{path: {out}}}\nruntime: {{shard_size: 12, batch_size: 1}}\n")
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(job), "--quiet"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    driver = subprocess.Popen(cmd, start_new_session=True, env=env)
    try:
        deadline = time.time() + 180
        while not _markers(out) and time.time() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its embedded Ray, mid-job
        driver.wait()
    markers = _markers(out)
    assert 0 < len(markers) < 4 and not (out / "_SUCCESS").exists()
    kept = {m: (out / m).read_text() for m in markers}
    subprocess.run(cmd, check=True, env=env, timeout=300)
    for m, text in kept.items():
        assert (out / m).read_text() == text  # committed shards were not regenerated
    _assert_same_dataset(ref_out, out)


def test_a_committed_marker_beats_attempt_counts(ray_local, tmp_path):
    """An actor that keeps dying after its shard's commit landed must not get the shard
    reported failed: the marker in storage decides."""
    from pipeline.executor import RayExecutor
    from pipeline.input.shards import plan_shards
    from pipeline.output.layout import marker_name
    from pipeline.output.manifest import Ledger
    from pipeline.output.progress import Progress
    from pipeline.output.storage import OutputFolder
    from pipeline.runner import make_plan

    src = write_prompts(tmp_path / "p.parquet", PROMPTS[:12])
    spec = build_spec({"input": {"path": str(src)}, "model": {"family": "null"},
                       "output": {"path": str(tmp_path / "out")},
                       "runtime": {"shard_size": 6, "max_shard_attempts": 2}})
    plan = make_plan(spec)
    folder = OutputFolder(spec.output.path)
    folder.write_json(marker_name("00000"), {"shard": 0, "successes": 6, "failed": 0})
    progress = Progress(folder, plan.fingerprint, 2, 12, 1, Ledger(folder, []), show_bar=False)

    def committed(shard_id):
        return folder.read_json(marker_name(plan.keys.shard_name(shard_id)))

    executor = RayExecutor(spec, plan.keys, progress, committed)
    try:
        first, second = plan_shards(plan.inputs, 6)
        executor.attempts[first.id] = executor.attempts[second.id] = 5  # died every time
        executor._retry(first, "actor died: SIGKILL")
        executor._retry(second, "actor died: SIGKILL")
    finally:
        ray_local.kill(executor.sink)
    assert [m["shard"] for m in executor.outcome.committed] == [0] and progress.shards_done == 1
    assert list(executor.outcome.failed) == [1] and progress.shards_failed == 1
    assert not executor.queue  # neither is sent again
