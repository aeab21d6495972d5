"""``synthset bench``: the pipeline side by side with the raw model loop and Ray Data.

One run, one model, one device, the same prompts and batch size:
  raw        the plain batched loop a user of the model's library writes (diffusers: one
             pipeline call per batch, one generator per image; images kept in memory): the limit
  invariant  the same, each image drawn alone (batch invariance: deterministic: true's cost)
  local      the full pipeline to local disk (its default settings)
  det-X      the same with runtime.deterministic: X (``--deterministic auto,true,false``)
  s3         the full pipeline to S3 (a moto server on 127.0.0.1)
  ray-data   read_parquet → map_batches over an actor pool holding the same model → write
  ar-b1      (autoregressive only) the raw loop with runtime.deterministic: false, one
             image per call, on its own 32 prompts
  ar-b16     the same at batch 16: issue 14 asks for >= 4x ar-b1's images/s
Figures are images/s over the steady part of each run (first batch to last write), with
wall-clock including start-up beside them.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import tempfile
import time
import uuid
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from models.families import get_family
from pipeline.spec import JobSpec, build_spec

PARTI = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "PartiPrompts.tsv")
STAGES = ("read", "text_encode", "generate", "image_encode", "image_encode_and_upload",
          "wait_for_uploads", "metadata")


def write_bench_prompts(path: str, n: int, scene_prompts: bool = False) -> str:
    """``n`` prompts (PartiPrompts when available, repeated under distinct ids). With
    ``scene_prompts``, scene-grammar captions instead, so the ``scene`` scorer analyses
    every image (``--quality``: the scorers' full cost, not a regex that never matches)."""
    source = os.environ.get("PARTIPROMPTS", PARTI)
    if scene_prompts:
        from models import scenes

        combos = scenes.all_combinations()
        base = [scenes.caption(combos[(i * 7919) % len(combos)]) for i in range(len(combos))]
    elif os.path.exists(source):
        with open(source, encoding="utf-8") as f:
            base = [line.split("\t", 1)[0] for line in f.read().splitlines()[1:] if line.strip()]
    else:
        base = [f"a {c} square on a white background" for c in ("red", "green", "blue")]
    prompts = [base[i % len(base)] for i in range(n)]
    pq.write_table(pa.table({"id": [f"b{i:07d}" for i in range(n)], "prompt": prompts}), path)
    return path


QUALITY_SCORERS = ["phash", "scene"]  # --quality: the cheap scorers the demo runs
BATCHED_SAMPLING = ("autoregressive",)  # families whose batch advances token by token
AR_BATCH, AR_IMAGES = 16, 32  # the ar-b* rows: batch 16 against one at a time


def bench_spec(args, prompts: str, output: str, options: dict | None = None,
               scorers: list[str] = (), deterministic: str | None = None,
               actors: int = 1) -> JobSpec:
    """The bench's job: one actor on ``args.cpus`` CPUs, or ``actors`` sharing the node."""
    raw = {"name": "bench", "input": {"path": prompts, "id_column": "id"},
           "model": {"family": args.family, "path": args.model,
                     "options": getattr(args, "model_options", None) or {}},
           "generation": {"width": args.size, "height": args.size, "steps": args.steps},
           "output": {"path": output, "image_format": args.image_format,
                      "format": args.format},
           "runtime": {"batch_size": args.batch_size, "shard_size": args.shard_size,
                       "actors": actors, "cpus_per_actor": args.cpus if actors == 1 else None,
                       "progress_interval_s": 1},
           "storage_options": options or {}, "quality": {"scorers": list(scorers)}}
    if deterministic is not None:
        raw["runtime"]["deterministic"] = {"true": True, "false": False}.get(deterministic,
                                                                              deterministic)
    family = get_family(args.family)
    if not family.uses_steps:
        raw["generation"].pop("steps")
    if family.sizes == "native":
        raw["generation"].pop("width"), raw["generation"].pop("height")
    return build_spec(raw)


def run_raw(spec: JobSpec, n: int, cpus: int, invariant: bool = False) -> dict[str, Any]:
    """The limit: the plain batched loop a user of the model's library writes (diffusers:
    one pipeline call per batch, one generator per image), nothing else. ``invariant``
    draws each image alone instead (the model's batch-invariant mode, what
    ``runtime.deterministic: true`` costs)."""
    import torch

    from models.base import derive_seed
    from models.registry import load_model, resolve_device
    from pipeline.stages.generate import generation_params

    torch.set_num_threads(cpus)
    m = spec.model
    model = load_model(m.family, m.path, m.encoder, resolve_device(), m.dtype, m.scheduler,
                       m.trust_remote_code, m.options, m.factory)
    if hasattr(model, "batch_invariant"):
        model.batch_invariant = invariant
    params = generation_params(spec, model)
    model.warmup(params)  # as the pipeline's actor does (torch.compile, cuDNN autotuning)
    table = pq.read_table(spec.input.path)
    prompts, ids = table.column("prompt").to_pylist(), table.column("id").to_pylist()
    draw = _draw_alone if invariant else _draw_batch
    b = spec.runtime.batch_size
    draw(model, prompts[:1], [0], params)  # warm-up, not timed
    start = time.perf_counter()
    for i in range(0, n, b):
        draw(model, prompts[i:i + b],
             [derive_seed(spec.generation.seed, s, 0) for s in ids[i:i + b]], params)
    seconds = time.perf_counter() - start
    del model  # the actors that run next share this device
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"images": n, "steady_s": seconds, "wall_s": seconds,
            "stages": {"generate": seconds}}


def ar_batch_modes(args, work: str) -> dict[str, Any]:
    """The ``ar-b1`` and ``ar-b16`` modes: the raw loop without batch invariance (what
    ``runtime.deterministic: false`` runs) at batch 1 and 16 on the same 32 prompts."""
    prompts = write_bench_prompts(os.path.join(work, "ar-prompts.parquet"), AR_IMAGES)

    def mode(batch: int):
        spec = bench_spec(argparse.Namespace(**{**vars(args), "batch_size": batch}),
                          prompts, work)
        return lambda: run_raw(spec, AR_IMAGES, args.cpus)
    return {f"ar-b{b}": mode(b) for b in (1, AR_BATCH)}


def _draw_batch(model, prompts: list[str], seeds: list[int], params) -> Any:
    """One library call per batch. A diffusers pipeline is called as its users call it
    (prompts in, text encoded inside, a generator per image); other families through
    their own batched encode and generate."""
    pipe = getattr(model, "pipe", None)
    if pipe is None:
        return model.generate(model.encode_prompt(prompts), seeds, params)
    import torch

    device = "cpu" if pipe.device.type == "cpu" else pipe.device
    kwargs = dict(params.extra)
    if params.steps is not None:
        kwargs["num_inference_steps"] = params.steps
    if params.guidance_scale is not None:
        kwargs["guidance_scale"] = params.guidance_scale
    return pipe(prompt=prompts, width=params.width, height=params.height, output_type="np",
                generator=[torch.Generator(device=device).manual_seed(s) for s in seeds],
                **kwargs).images


def _draw_alone(model, prompts: list[str], seeds: list[int], params) -> Any:
    """Each prompt encoded and each image drawn on its own: batch invariance."""
    return [model.generate(model.encode_prompt([p]), [s], params)
            for p, s in zip(prompts, seeds)]


def run_pipeline(spec: JobSpec) -> dict[str, Any]:
    """The full pipeline; steady time spans the first shard's start to the driver learning
    of the last commit (Ray Data's span ends when ``write_parquet`` returns)."""
    from pipeline.output.manifest import read_markers
    from pipeline.output.progress import PROGRESS, committed_shards
    from pipeline.runner import open_output, run_job

    start = time.perf_counter()
    manifest = run_job(spec, overwrite=True, show_progress=False)
    wall = time.perf_counter() - start
    folder = open_output(spec)
    markers = read_markers(folder, committed_shards(folder))
    stages: Counter[str] = Counter()
    uploads: Counter[str] = Counter()
    actors: dict[int, dict] = {}  # pid -> its place, share, store threads and images
    for m in markers:
        stages.update(m["stage_seconds"])
        uploads.update(m["uploads"])
        actor = m.get("actor") or {"pid": 0}
        entry = actors.setdefault(actor["pid"], {**actor, "images": 0})
        entry["images"] += m["successes"]
    if not markers:
        raise RuntimeError(f"the pipeline committed no shard under {spec.output.path}")
    last = (folder.read_json(PROGRESS) or {}).get("last_commit_at") or max(
        m["end_time"] for m in markers)
    steady = last - min(m["start_time"] for m in markers)
    return {"images": manifest["successes"], "steady_s": steady, "wall_s": wall,
            "marginal": marginal_rate([(m["end_time"], m["successes"]) for m in markers]),
            "stages": dict(stages), "objects": uploads["objects"], "bytes": uploads["bytes"],
            "actor_rss_mb": max(m.get("peak_rss_mb", 0) for m in markers), "actors": actors}


def marginal_rate(ends: list[tuple[float, int]]) -> float:
    """Images/s once the pipeline is full: the images finished after the first unit of work
    (a shard, a batch) over the time from its end to the last one's. Excludes the fill (the
    first batch's device time, when nothing can encode yet) that a start-to-end span
    charges every run once, which at 8 images/s and batch 8 is a whole second."""
    ends = sorted(ends)
    if len(ends) < 2 or ends[-1][0] <= ends[0][0]:
        return 0.0
    return sum(n for _, n in ends[1:]) / (ends[-1][0] - ends[0][0])


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
        bucket = f"bench-{uuid.uuid4().hex[:8]}"  # moto's state outlives one server
        s3fs.S3FileSystem(**options).mkdir(bucket)
        return fn(options, bucket)
    finally:
        server.stop()


def run_ray_data(spec: JobSpec, output: str, cpus: int) -> dict[str, Any]:
    from pipeline.executor.baseline import run_ray_data as run

    result = run(spec, spec.input.path, output, actors=1, cpus=cpus)
    return {"images": result["images"], "steady_s": result["steady_s"],
            "wall_s": result["seconds"], "stages": result["stages"],
            "objects": result["objects"], "bytes": result["bytes"],
            "actor_rss_mb": result["actor_rss_mb"], "marginal": marginal_rate(result["ends"])}


def _rate(r: dict) -> float:
    return r["images"] / r["steady_s"] if r.get("steady_s") else 0.0


def _marginal(r: dict) -> float:
    return r.get("marginal") or _rate(r)


def format_report(results: dict[str, dict], args) -> str:
    raw = results.get("raw", {})
    rd = results.get("ray-data", {})
    lines = [f"synthset bench: family={args.family} model={args.model or 'shipped'} "
             f"format={args.format} size={args.size} batch={args.batch_size} "
             f"prompts={args.prompts} cpus={args.cpus} rounds={max(1, args.repeat)} "
             "(best round per mode; spread = (best - worst) / best)",
             f"{'mode':<10}{'images':>8}{'steady s':>10}{'img/s':>10}{'spread':>8}{'vs raw':>8}"
             f"{'vs ray-data':>12}{'wall s':>8}{'PUT/s':>8}{'MB/s':>7}{'actor RSS MB':>14}"
             f"{'marginal':>10}{'vs raw':>8}"]
    for name, r in results.items():
        steady = r["steady_s"] or float("inf")
        puts = f"{r['objects'] / steady:>8.1f}{r['bytes'] / 2**20 / steady:>7.1f}" \
            if "objects" in r else f"{'':>15}"
        lines.append(
            f"{name:<10}{r['images']:>8}{r['steady_s']:>10.2f}{_rate(r):>10.1f}"
            f"{r.get('spread', 0):>8.0%}{_rate(r) / _rate(raw) if _rate(raw) else 0:>8.2f}"
            f"{_rate(r) / _rate(rd) if rd and _rate(rd) else 0:>12.2f}{r['wall_s']:>8.2f}{puts}"
            f"{r.get('actor_rss_mb', 0):>14.0f}{_marginal(r):>10.1f}"
            f"{_marginal(r) / _marginal(raw) if _marginal(raw) else 0:>8.2f}")
    lines.append("marginal: images/s once full, from the first shard's (Ray Data: batch's) end "
                 "to the last one's; the raw loop's is its rate")
    lines.append("per-stage seconds (summed over shards; encode/upload run in a pool, "
                 "overlapping generation):")
    for name, r in results.items():
        parts = ", ".join(f"{k} {r['stages'][k]:.2f}" for k in STAGES if k in r["stages"])
        lines.append(f"  {name:<9} {parts}")
    one = _rate(results.get("ar-b1", {}))
    if one and f"ar-b{AR_BATCH}" in results:
        lines.append(f"batched AR sampling (deterministic: false): batch {AR_BATCH} draws "
                     f"{_rate(results[f'ar-b{AR_BATCH}']) / one:.2f}x the images/s of one "
                     "at a time (issue 14 asks >= 4x)")
    if "quality" in results and _rate(results.get("local", {})):
        lines.append(f"with {' + '.join(QUALITY_SCORERS)} scorers: "
                     f"{_rate(results['quality']) / _rate(results['local']):.2f}x the throughput "
                     "of local (the same pipeline without scorers; scene-grammar prompts)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines.append(f"driver peak RSS {rss:.0f} MB (raw loop runs in the driver process)")
    if args.family == "null" and "local" in results:
        lines.append(f"pipeline throughput with a free generator (null, to disk): "
                     f"{_rate(results['local']) / args.cpus:,.0f} images/s per core")
    return "\n".join(lines)


def encode_pool(size: int, cpus: int, n: int = 32) -> str:
    """Image encoding at ``size``²: serial vs a thread pool vs a process pool of ``cpus``.

    The worker encodes on threads; this shows, per format on this machine, whether that
    scales with cores (it does where the codec releases the GIL) and what processes
    (spawned, arrays pickled over a pipe) would give instead.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    import numpy as np

    from pipeline.stages.image import encode_image

    rng = np.random.default_rng(0)
    # blocks plus mild noise: compresses about like a generated picture, not like flat noise
    blocks = rng.integers(0, 256, (n, 8, 8, 3)).repeat(size // 8, 1).repeat(size // 8, 2)
    images = list((blocks + rng.integers(-6, 7, blocks.shape)).clip(0, 255).astype(np.uint8))
    lines = [f"image encode at {size}x{size}, images/s ({n} images, best of 2; {cpus} "
             "workers):",
             f"  {'format':<8}{'serial':>9}{'threads':>9}{'processes':>11}"]
    spawn = multiprocessing.get_context("spawn")  # forking a process holding Ray is unsafe
    with ThreadPoolExecutor(cpus) as threads, ProcessPoolExecutor(cpus, spawn) as procs:
        for pool in (threads, procs):  # start-up, not timed
            list(pool.map(encode_image, images[:cpus], ["png"] * cpus))
        for fmt in ("jpeg", "png", "webp"):
            rates = []
            for pool in (None, threads, procs):
                best = float("inf")
                for _ in range(2):  # best of two: a first pass also pays lazy set-up
                    start = time.perf_counter()
                    if pool is None:
                        [encode_image(im, fmt) for im in images]
                    else:
                        list(pool.map(encode_image, images, [fmt] * n))
                    best = min(best, time.perf_counter() - start)
                rates.append(n / best)
            lines.append(f"  {fmt:<8}{rates[0]:>9.0f}{rates[1]:>9.0f}{rates[2]:>11.0f}")
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
            f"{plan.shards} shards): {seconds * 1000:.0f} ms, Python heap peak "
            f"{peak / 2**20:.1f} MiB, driver RSS {rss_before:.0f} -> {rss:.0f} MB")


def same_priority_workers() -> None:
    """Ray starts its workers at nice +15 relative to the raylet (``worker_niceness``), so
    on a loaded machine the pipeline's and Ray Data's actors would get a fraction of the
    CPU the raw loop gets in this (driver) process. The bench's workers keep the
    driver's priority; it applies to a Ray this process starts, not one running already."""
    os.environ.setdefault("RAY_worker_niceness", "0")


def run_bench(args) -> str:
    """All modes in one process, one after the other; returns the printed report."""
    same_priority_workers()
    work = args.workdir or tempfile.mkdtemp(prefix="synthset-bench-")
    os.makedirs(work, exist_ok=True)
    if args.plan_rows:
        return plan_scale(args.plan_rows, work)
    prompts = write_bench_prompts(os.path.join(work, "prompts.parquet"), args.prompts,
                                  scene_prompts=getattr(args, "quality", False))
    modes = {"raw": lambda: run_raw(bench_spec(args, prompts, work), args.prompts, args.cpus),
             "invariant": lambda: run_raw(bench_spec(args, prompts, work), args.prompts,
                                          args.cpus, invariant=True),
             "local": lambda: run_pipeline(bench_spec(args, prompts,
                                                      os.path.join(work, "local")))}
    if getattr(args, "skip_invariant", False):
        del modes["invariant"]
    for value in getattr(args, "deterministic", None) or ():
        modes[f"det-{value}"] = lambda v=value: run_pipeline(bench_spec(
            args, prompts, os.path.join(work, f"det-{v}"), deterministic=v))
    if getattr(args, "quality", False):  # right after local: the pair to compare
        modes["quality"] = lambda: run_pipeline(bench_spec(
            args, prompts, os.path.join(work, "quality"), scorers=QUALITY_SCORERS))
    if args.family in BATCHED_SAMPLING:
        modes.update(ar_batch_modes(args, work))
    if not args.skip_s3:
        modes["s3"] = lambda: with_moto(lambda options, bucket: run_pipeline(
            bench_spec(args, prompts, f"s3://{bucket}/run", options)))
    if not args.skip_ray_data:
        modes["ray-data"] = lambda: run_ray_data(bench_spec(args, prompts, work),
                                                 os.path.join(work, "ray-data"), args.cpus)
    # Rounds interleave the modes, so drift in a shared machine's speed hits each alike;
    # each mode reports its best round, and the spread shows how much the rounds differed.
    runs: dict[str, list[dict]] = {name: [] for name in modes}
    for _ in range(max(1, args.repeat)):
        for name, run in modes.items():
            runs[name].append(run())
    results = {}
    for name, rounds in runs.items():
        rates = [_rate(r) for r in rounds]
        results[name] = {**max(rounds, key=_rate),
                         "spread": (max(rates) - min(rates)) / max(rates) if max(rates) else 0}
    report = format_report(results, args)
    if args.encode_size:
        report += "\n" + encode_pool(args.encode_size, args.cpus)
    return report
