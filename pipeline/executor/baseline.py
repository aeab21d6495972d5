"""What users would write instead: Ray Data ``read_parquet → map_batches → write``.

The benchmark runs it on the same model, prompts, batch size and CPUs as the
pipeline, so the two figures can be compared side by side.
"""

from __future__ import annotations

import os
import resource
import shutil
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

STAGES = ("s_text_encode", "s_generate", "s_image_encode")  # seconds, per row


class _Generate:
    """The callable class Ray Data's docs recommend: load once, then one call per batch."""

    def __init__(self, spec_json: str, cpus: int) -> None:
        import torch

        from models.registry import load_model, resolve_device
        from pipeline.spec import JobSpec
        from pipeline.stages.generate import generation_params

        torch.set_num_threads(cpus)
        self.spec = JobSpec.model_validate_json(spec_json)
        m = self.spec.model
        self.model = load_model(m.family, m.path, m.encoder, resolve_device(), m.dtype,
                                m.scheduler, m.trust_remote_code, m.options, m.factory)
        self.params = generation_params(self.spec, self.model)
        self.model.warmup(self.params)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from models.base import derive_seed
        from pipeline.stages.image import encode_image

        started, t0 = time.time(), time.perf_counter()
        prompts = [str(p) for p in batch[self.spec.input.prompt_column]]
        ids = [str(i) for i in batch["id"]]
        seeds = [derive_seed(self.spec.generation.seed, i, 0) for i in ids]
        embeds = self.model.encode_prompt(prompts)
        t1 = time.perf_counter()
        images = self.model.generate(embeds, seeds, self.params)
        t2 = time.perf_counter()
        fmt, quality = self.spec.output.image_format, self.spec.output.quality
        encoded = np.array([encode_image(im, fmt, quality) for im in images], dtype=object)
        t3 = time.perf_counter()
        n = len(ids)
        # per-batch timestamps give the steady-state span (start-up excluded); stage times
        # and peak RSS ride along as columns, spread over the batch's rows
        return {"id": np.array(ids), "prompt": np.array(prompts), "image": encoded,
                "t_start": np.full(n, started), "s_text_encode": np.full(n, (t1 - t0) / n),
                "s_generate": np.full(n, (t2 - t1) / n),
                "s_image_encode": np.full(n, (t3 - t2) / n),
                "rss_mb": np.full(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run_ray_data(spec, input_path: str, output_dir: str, actors: int, cpus: int) -> dict:
    """Generate every prompt with Ray Data and write Parquet; returns images, seconds, and
    the files and bytes written."""
    from pipeline.executor import connect

    connect()
    gpus = 1 if ray.cluster_resources().get("GPU") else 0
    shutil.rmtree(output_dir, ignore_errors=True)  # write_parquet adds files to what is there
    start = time.perf_counter()
    # Each actor reserves one CPU but runs torch on ``cpus`` threads, like the pipeline's
    # actor; reserving every core starves Ray Data's read and write tasks and it hangs.
    ds = ray.data.read_parquet(input_path)
    ds = ds.map_batches(_Generate, fn_constructor_args=(spec.model_dump_json(), cpus),
                        batch_size=spec.runtime.batch_size, concurrency=actors, num_cpus=1,
                        num_gpus=gpus)
    ds.write_parquet(output_dir)
    seconds, finished = time.perf_counter() - start, time.time()

    times = pq.read_table(output_dir, columns=["t_start", *STAGES, "rss_mb"])
    # each batch's end: its start plus its stages (the per-row seconds times its rows)
    batches = times.group_by("t_start").aggregate(
        [("s_text_encode", "sum"), ("s_generate", "sum"), ("s_image_encode", "sum"),
         ("t_start", "count")]).to_pylist()
    # first batch started → last file written: the same span the pipeline is measured over
    steady = finished - min(times.column("t_start").to_pylist())
    files = [os.path.join(output_dir, f) for f in os.listdir(output_dir)]
    return {"images": times.num_rows, "seconds": seconds, "steady_s": steady,
            "stages": {s[2:]: pc.sum(times[s]).as_py() for s in STAGES},
            "actor_rss_mb": pc.max(times["rss_mb"]).as_py(),
            "objects": len(files), "bytes": sum(os.path.getsize(f) for f in files),
            "ends": [(b["t_start"] + b["s_text_encode_sum"] + b["s_generate_sum"]
                      + b["s_image_encode_sum"], b["t_start_count"]) for b in batches]}
