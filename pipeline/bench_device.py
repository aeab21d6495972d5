"""``synthset bench --device-table``: the accelerator regime on any machine.

The null family with ``model.options.device_ms_per_image`` stands in for a GPU: each
batch sleeps (no CPU) for batch / rate seconds and returns pictures that compress like
renders. At each device rate and image format, the pipeline's images/s is set against
its limit, min(device rate, the node's encode capacity), and against the Ray Data
baseline doing the same work (its actor encodes in its own thread).

The encode capacity is what the pipeline's store threads can do on this node: a pool of
as many threads as the job's actors hold in all, encoding the same render pictures with
the same settings, timed just before and just after each cell (the mean of the two), so
that a shared machine's changing load hits the limit and the pipeline alike.

``--device-actors N`` adds rows with N actors on the node, each its own simulated device
at ``--device-actor-rate`` images/s, reporting each actor's store threads and images/s
and the node's totals.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

RATES = (8, 32, 128)  # simulated device, images/s
IMAGE_FORMATS = ("png", "jpeg", "webp")
CAPACITY_S = 5.0  # seconds of encoding per capacity measurement


def node_store_threads(image_format: str, output_format: str, cpus: int, actors: int) -> int:
    """The store threads a job's ``actors`` hold in all on a ``cpus``-core node, as the
    executor and the actors size them (a simulated device: the generator waits, no CPU)."""
    from pipeline.executor.capacity import cpu_share
    from pipeline.stages.store import store_threads

    share = cpus if actors == 1 else cpu_share(cpus, actors)  # the bench's cpus_per_actor
    return max(1, sum(store_threads(output_format, share, False, k) for k in range(actors)))


def encode_capacity(size: int, image_format: str, threads: int, quality: int = 95,
                    seconds: float = CAPACITY_S) -> float:
    """Images/s ``threads`` threads encode at ``size``², on the simulated device's own
    pictures (a render bank as the null family paints it, seeded copies), for ``seconds``."""
    from models.render import RenderBank
    from pipeline.stages.image import encode_image

    bank = RenderBank(size, size)
    images = list(bank.draw(list(range(4 * threads))))

    def encode(im):
        return encode_image(im, image_format, quality)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(encode, images[:threads]))  # warm-up
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            list(pool.map(encode, images))
            done += len(images)
        return done / (time.perf_counter() - start)


def device_args(args, image_format: str, rate: float) -> Any:
    """The bench's arguments for one cell: null family, the device's time per image."""
    import argparse

    return argparse.Namespace(**{**vars(args), "family": "null", "model": None,
                                 "image_format": image_format,
                                 "model_options": {"device_ms_per_image": 1000 / rate}})


def run_cell(args, work: str, image_format: str, rate: float, n: int, actors: int = 1,
             ray_data: bool = True) -> dict[str, Any]:
    """Pipeline (and Ray Data) at one rate and format, ``n`` images; ``rate`` is each
    actor's device, so the node's device does ``actors × rate``."""
    from pipeline.bench import _rate, bench_spec, run_pipeline, run_ray_data, write_bench_prompts

    prompts = write_bench_prompts(os.path.join(work, f"device-{n}.parquet"), n)
    cell = device_args(args, image_format, rate)
    out = os.path.join(work, f"device-{image_format}-{rate:g}" + (f"-x{actors}" if actors > 1
                                                                   else ""))
    result = run_pipeline(bench_spec(cell, prompts, out, actors=actors))
    row = {"pipeline": result["marginal"] or _rate(result), "actors": result["actors"],
           "steady_s": result["steady_s"]}
    if ray_data and not args.skip_ray_data:
        rd = run_ray_data(bench_spec(cell, prompts, work), out + "-rd", args.cpus)
        row["ray-data"] = rd["marginal"] or _rate(rd)
    return row


def measured_cell(args, work: str, image_format: str, rate: float,
                  actors: int = 1) -> tuple[float, dict[str, Any]]:
    """One cell between two capacity measurements; returns (capacity, the cell's row)."""
    threads = node_store_threads(image_format, args.format, args.cpus, actors)
    seconds = getattr(args, "capacity_seconds", CAPACITY_S)
    before = encode_capacity(args.size, image_format, threads, seconds=seconds)
    # about device_seconds at the expected rate, whichever of device and encoding limits it
    n = max(2 * args.batch_size * actors,
            int(min(rate * actors, before) * args.device_seconds))
    row = run_cell(args, work, image_format, rate, n, actors, ray_data=actors == 1)
    after = encode_capacity(args.size, image_format, threads, seconds=seconds)
    return (before + after) / 2, row


def device_table(args) -> str:
    """Every format × rate, one row each (then the several-actor rows); returns the table."""
    import tempfile

    from pipeline.bench import same_priority_workers

    same_priority_workers()
    work = args.workdir or tempfile.mkdtemp(prefix="synthset-bench-")
    os.makedirs(work, exist_ok=True)
    lines = [f"simulated device: null family, {args.size}², batch {args.batch_size}, "
             f"{args.cpus} cpus, ~{args.device_seconds:.0f} s per cell; "
             "limit = min(device rate, encode capacity of the store threads, measured "
             "before and after the cell); images/s once full (after the first shard, or "
             "Ray Data's first batch, to the last)",
             f"  {'format':<7}{'device/s':>9}{'encode/s':>10}{'limit':>8}{'pipeline':>10}"
             f"{'vs limit':>9}{'ray-data':>10}{'vs limit':>9}"]
    for image_format in getattr(args, "device_formats", None) or IMAGE_FORMATS:
        for rate in getattr(args, "device_rates", None) or RATES:
            capacity, row = measured_cell(args, work, image_format, rate)
            limit = min(rate, capacity)
            rd = row.get("ray-data")
            lines.append(f"  {image_format:<7}{rate:>9}{capacity:>10.1f}{limit:>8.1f}"
                         f"{row['pipeline']:>10.1f}{row['pipeline'] / limit:>9.2f}"
                         + (f"{rd:>10.1f}{rd / limit:>9.2f}" if rd is not None else ""))
    if getattr(args, "device_actors", 0) > 1:
        lines += several_actors(args, work)
    return "\n".join(lines)


def several_actors(args, work: str) -> list[str]:
    """Rows for ``--device-actors N`` on this node: per actor, then the node's totals."""
    actors, rate = args.device_actors, args.device_actor_rate
    lines = [f"{actors} actors on one node ({args.cpus} cpus), each a device at {rate:g} "
             f"images/s (node {actors * rate:g}/s); per actor: node index, CPU share, store "
             "threads, images, images/s",
             f"  {'format':<7}{'actor':>6}{'cpus':>6}{'threads':>8}{'images':>8}{'img/s':>8}"
             f"{'limit':>8}{'vs limit':>9}"]
    for image_format in getattr(args, "device_formats", None) or IMAGE_FORMATS:
        capacity, row = measured_cell(args, work, image_format, rate, actors)
        steady = row["steady_s"]
        for a in sorted(row["actors"].values(), key=lambda a: a["index"]):
            lines.append(f"  {image_format:<7}{a['index']:>6}{a['cpus']:>6g}"
                         f"{a['store_threads']:>8}{a['images']:>8}{a['images'] / steady:>8.1f}")
        limit = min(actors * rate, capacity)
        threads = sum(a["store_threads"] for a in row["actors"].values())
        images = sum(a["images"] for a in row["actors"].values())
        lines.append(f"  {image_format:<7}{'node':>6}{args.cpus:>6}{threads:>8}{images:>8}"
                     f"{row['pipeline']:>8.1f}{limit:>8.1f}{row['pipeline'] / limit:>9.2f}"
                     f"   (encode capacity {capacity:.1f}/s on "
                     f"{node_store_threads(image_format, args.format, args.cpus, actors)} "
                     "threads)")
    return lines
