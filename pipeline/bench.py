"""``synthset bench``: the pipeline side by side with the raw model loop and Ray Data.

One run, one model, one device, the same prompts and batch size:
  raw        the generator loop alone (encode + generate, images kept in memory): the limit
  local      the full pipeline to local disk
  s3         the full pipeline to S3 (a moto server on 127.0.0.1)
  ray-data   read_parquet → map_batches over an actor pool holding the same model → write
Figures are images/s over the steady part of each run (first batch to last write), with
wall-clock including start-up beside them.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.spec import JobSpec, build_spec

PARTI = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "PartiPrompts.tsv")
STAGES = ("read", "text_encode", "generate", "image_encode_and_upload", "wait_for_uploads",
          "metadata")


def write_bench_prompts(path: str, n: int) -> str:
    """``n`` prompts (PartiPrompts when available, repeated under distinct ids)."""
    source = os.environ.get("PARTIPROMPTS", PARTI)
    if os.path.exists(source):
        with open(source, encoding="utf-8") as f:
            base = [line.split("\t", 1)[0] for line in f.read().splitlines()[1:] if line.strip()]
    else:
        base = [f"a {c} square on a white background" for c in ("red", "green", "blue")]
    prompts = [base[i % len(base)] for i in range(n)]
    pq.write_table(pa.table({"id": [f"b{i:07d}" for i in range(n)], "prompt": prompts}), path)
    return path


def bench_spec(args, prompts: str, output: str, options: dict | None = None) -> JobSpec:
    raw = {"name": "bench", "input": {"path": prompts, "id_column": "id"},
           "model": {"family": args.family, "path": args.model},
           "generation": {"width": args.size, "height": args.size, "steps": args.steps},
           "output": {"path": output, "image_format": args.image_format,
                      "format": args.format},
           "runtime": {"batch_size": args.batch_size, "shard_size": args.shard_size,
                       "actors": 1, "cpus_per_actor": args.cpus, "progress_interval_s": 1},
           "storage_options": options or {}}
    if args.family in ("gan", "autoregressive", "null"):
        raw["generation"].pop("steps")
    if args.family in ("gan", "autoregressive"):
        raw["generation"].pop("width"), raw["generation"].pop("height")
    return build_spec(raw)


def run_raw(spec: JobSpec, n: int, cpus: int) -> dict[str, Any]:
    """The limit: the model's own encode + generate loop, nothing else."""
    import torch

    from models.base import derive_seed
    from models.registry import load_model
    from pipeline.worker import generation_params

    torch.set_num_threads(cpus)
    m = spec.model
    model = load_model(m.family, m.path, m.encoder, "cpu", m.dtype, m.scheduler,
                       m.trust_remote_code, m.options)
    params = generation_params(spec, model)
    table = pq.read_table(spec.input.path)
    prompts, ids = table.column("prompt").to_pylist(), table.column("id").to_pylist()
    b = spec.runtime.batch_size
    model.generate(model.encode_prompt(prompts[:1]), [0], params)  # warm-up, not timed
    start, gen = time.perf_counter(), 0.0
    for i in range(0, n, b):
        embeds = model.encode_prompt(prompts[i:i + b])
        t = time.perf_counter()
        model.generate(embeds, [derive_seed(spec.generation.seed, s, 0) for s in ids[i:i + b]],
                       params)
        gen += time.perf_counter() - t
    seconds = time.perf_counter() - start
    return {"images": n, "steady_s": seconds, "wall_s": seconds,
            "stages": {"generate": gen, "text_encode": seconds - gen}}


def run_pipeline(spec: JobSpec) -> dict[str, Any]:
    """The full pipeline; steady time spans the first shard's start to the last marker."""
    from pipeline.progress import committed_shards
    from pipeline.runner import open_output, read_markers, run_job

    start = time.perf_counter()
    manifest = run_job(spec, overwrite=True, show_progress=False)
    wall = time.perf_counter() - start
    folder = open_output(spec)
    markers = read_markers(folder, committed_shards(folder))
    stages: Counter[str] = Counter()
    for m in markers:
        stages.update(m["stage_seconds"])
    steady = max(m["end_time"] for m in markers) - min(m["start_time"] for m in markers)
    return {"images": manifest["successes"], "steady_s": steady, "wall_s": wall,
            "stages": dict(stages), "actor_rss_mb": max(m.get("peak_rss_mb", 0)
                                                        for m in markers)}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_moto(fn):
    """Run ``fn(storage_options, bucket)`` against a moto S3 server on loopback."""
    import s3fs
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        # credentials in the options: actors started earlier never saw this process's env
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "bench",
                   "secret": "bench-secret"}
        s3fs.S3FileSystem(**options).mkdir("bench")
        return fn(options, "bench")
    finally:
        server.stop()


def run_ray_data(spec: JobSpec, output: str, cpus: int) -> dict[str, Any]:
    from pipeline.executor.baseline import run_ray_data as run

    result = run(spec, spec.input.path, output, actors=1, cpus=cpus)
    return {"images": result["images"], "steady_s": result["steady_s"],
            "wall_s": result["seconds"], "stages": {}}


def format_report(results: dict[str, dict], args) -> str:
    raw = results.get("raw", {})
    rd = results.get("ray-data", {})

    def rate(r):
        return r["images"] / r["steady_s"] if r.get("steady_s") else 0.0

    lines = [f"synthset bench: family={args.family} model={args.model or 'shipped'} "
             f"format={args.format} "
             f"size={args.size} batch={args.batch_size} prompts={args.prompts} cpus={args.cpus}",
             f"{'mode':<10}{'images':>8}{'steady s':>10}{'img/s':>9}{'vs raw':>8}"
             f"{'vs ray-data':>12}{'wall s':>9}  {'actor RSS MB':>12}"]
    for name, r in results.items():
        lines.append(
            f"{name:<10}{r['images']:>8}{r['steady_s']:>10.2f}{rate(r):>9.2f}"
            f"{rate(r) / rate(raw) if raw else 0:>8.2f}"
            f"{rate(r) / rate(rd) if rd and rate(rd) else 0:>12.2f}{r['wall_s']:>9.2f}  "
            f"{r.get('actor_rss_mb', 0):>12.0f}")
    lines.append("per-stage seconds (summed over shards; encode/upload run in a pool, "
                 "overlapping generation):")
    for name, r in results.items():
        parts = ", ".join(f"{k} {r['stages'][k]:.2f}" for k in STAGES if k in r["stages"])
        lines.append(f"  {name:<9} {parts}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines.append(f"driver peak RSS {rss:.0f} MB (raw loop runs in the driver process)")
    return "\n".join(lines)


def plan_scale(n: int, workdir: str) -> str:
    """Plan an ``n``-prompt job from a generated Parquet; report seconds and driver memory."""
    import tracemalloc

    from pipeline.runner import make_plan

    path = os.path.join(workdir, f"scale-{n}.parquet")
    if not os.path.exists(path):
        writer = pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("prompt", pa.string())]))
        for start in range(0, n, 100_000):  # written in chunks: the generator stays small too
            ids = [f"s{i:09d}" for i in range(start, min(n, start + 100_000))]
            writer.write_table(pa.table({"id": ids, "prompt": [f"prompt {i}" for i in ids]}),
                               row_group_size=65_536)
        writer.close()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    start = time.perf_counter()
    plan = make_plan(build_spec({"input": {"path": path, "id_column": "id"},
                                 "model": {"family": "null"}}))
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (f"plan of {plan.prompts:,} prompts ({os.path.getsize(path) / 2**20:.0f} MiB, "
            f"{plan.shards} shards): {seconds:.2f} s, Python heap peak "
            f"{peak / 2**20:.1f} MiB, driver RSS {rss_before:.0f} -> {rss:.0f} MB")


def run_bench(args) -> str:
    """All modes in one process, one after the other; returns the printed report."""
    work = args.workdir or tempfile.mkdtemp(prefix="synthset-bench-")
    os.makedirs(work, exist_ok=True)
    if args.plan_rows:
        return plan_scale(args.plan_rows, work)
    prompts = write_bench_prompts(os.path.join(work, "prompts.parquet"), args.prompts)
    results: dict[str, dict] = {}
    results["raw"] = run_raw(bench_spec(args, prompts, work), args.prompts, args.cpus)
    results["local"] = run_pipeline(bench_spec(args, prompts, os.path.join(work, "local")))
    if not args.skip_s3:
        results["s3"] = with_moto(lambda options, bucket: run_pipeline(
            bench_spec(args, prompts, f"s3://{bucket}/run", options)))
    if not args.skip_ray_data:
        results["ray-data"] = run_ray_data(bench_spec(args, prompts, work),
                                           os.path.join(work, "ray-data"), args.cpus)
    return format_report(results, args)
