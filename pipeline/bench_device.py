"""``synthset bench --device-table``: the accelerator regime on any machine.

The null family with ``model.options.device_ms_per_image`` stands in for a GPU: each
batch sleeps (no CPU) for batch / rate seconds and returns pictures that compress like
renders. At each device rate and image format, the pipeline's images/s is set against
its limit, min(device rate, the node's encode capacity measured on all its cores), and
against the Ray Data baseline doing the same work (its actor encodes in its own thread).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

RATES = (8, 32, 128)  # simulated device, images/s
IMAGE_FORMATS = ("png", "jpeg", "webp")


def encode_capacity(size: int, image_format: str, cpus: int, n: int = 24) -> float:
    """Images/s this node encodes at ``size``² with ``cpus`` threads, on render pictures."""
    from models.render import RenderBank
    from pipeline.stages.image import encode_image

    images = list(RenderBank(size, size, pictures=4).draw(list(range(n))))
    with ThreadPoolExecutor(cpus) as pool:
        list(pool.map(encode_image, images[:cpus], [image_format] * cpus))  # warm-up
        start = time.perf_counter()
        list(pool.map(encode_image, images, [image_format] * n))
        return n / (time.perf_counter() - start)


def device_args(args, image_format: str, rate: int) -> Any:
    """The bench's arguments for one cell: null family, the device's time per image."""
    import argparse

    return argparse.Namespace(**{**vars(args), "family": "null", "model": None,
                                 "image_format": image_format,
                                 "model_options": {"device_ms_per_image": 1000 / rate}})


def run_cell(args, work: str, image_format: str, rate: int) -> dict[str, Any]:
    """Pipeline (and Ray Data) at one rate and format, ~``device_seconds`` of device time."""
    from pipeline.bench import _rate, bench_spec, run_pipeline, run_ray_data, write_bench_prompts

    n = max(2 * args.batch_size, int(rate * args.device_seconds))
    prompts = write_bench_prompts(os.path.join(work, f"device-{n}.parquet"), n)
    cell = device_args(args, image_format, rate)
    out = os.path.join(work, f"device-{image_format}-{rate}")
    row = {"pipeline": _rate(run_pipeline(bench_spec(cell, prompts, out)))}
    if not args.skip_ray_data:
        row["ray-data"] = _rate(run_ray_data(bench_spec(cell, prompts, work), out + "-rd",
                                             args.cpus))
    return row


def device_table(args) -> str:
    """Every format × rate, one row each; returns the printed table."""
    import tempfile

    work = args.workdir or tempfile.mkdtemp(prefix="synthset-bench-")
    os.makedirs(work, exist_ok=True)
    lines = [f"simulated device: null family, {args.size}², batch {args.batch_size}, "
             f"{args.cpus} cpus, ~{args.device_seconds:.0f} s of device time per cell; "
             "limit = min(device rate, encode capacity on all cores)",
             f"  {'format':<7}{'device/s':>9}{'encode/s':>10}{'limit':>8}{'pipeline':>10}"
             f"{'vs limit':>9}{'ray-data':>10}{'vs limit':>9}"]
    for image_format in getattr(args, "device_formats", None) or IMAGE_FORMATS:
        capacity = encode_capacity(args.size, image_format, args.cpus)
        for rate in getattr(args, "device_rates", None) or RATES:
            row = run_cell(args, work, image_format, rate)
            limit = min(rate, capacity)
            rd = row.get("ray-data")
            lines.append(f"  {image_format:<7}{rate:>9}{capacity:>10.1f}{limit:>8.1f}"
                         f"{row['pipeline']:>10.1f}{row['pipeline'] / limit:>9.2f}"
                         + (f"{rd:>10.1f}{rd / limit:>9.2f}" if rd is not None else ""))
    return "\n".join(lines)
