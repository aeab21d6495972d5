"""``synthset bench``: one run prints every mode side by side, and the figures add up."""

from __future__ import annotations

import argparse
import json
import os

import pyarrow.parquet as pq

from pipeline.bench import run_bench
from pipeline.bench_device import device_table

MODES = ("raw", "invariant", "local", "s3", "ray-data")


def _bench_args(tmp_path, **over) -> argparse.Namespace:
    args = dict(family="null", model=None, prompts=300, batch_size=32, shard_size=100, size=32,
                steps=4, image_format="jpeg", format="parquet", cpus=2, workdir=str(tmp_path),
                skip_s3=False, skip_ray_data=False, plan_rows=None, encode_size=64, repeat=2)
    return argparse.Namespace(**{**args, **over})


def _table(report: str) -> dict[str, list[str]]:
    """The main table's rows by mode (the per-stage lines below it start with modes too)."""
    table = report.split("per-stage seconds")[0]
    return {cells[0]: cells for cells in map(str.split, table.splitlines())
            if cells and cells[0] in MODES}


def test_bench_prints_every_mode_from_one_run(ray_local, tmp_path):
    report = run_bench(_bench_args(tmp_path))
    table = _table(report)
    assert set(table) == set(MODES), report
    for cells in table.values():
        assert int(cells[1]) == 300, report  # every mode made every image
        assert float(cells[3]) > 0, report  # images/s
    assert float(table["raw"][5]) == 1.0 and float(table["ray-data"][6]) == 1.0
    # the ratios are the rates divided, not estimates
    local, raw, rd = (float(table[m][3]) for m in ("local", "raw", "ray-data"))
    assert abs(float(table["local"][5]) - local / raw) < 0.01
    # batch invariance (each image drawn alone) is its own row, priced against the plain loop
    assert abs(float(table["invariant"][5]) - float(table["invariant"][3]) / raw) < 0.01
    assert abs(float(table["local"][6]) - local / rd) < 0.01
    assert "rounds=2" in report and all(0 <= int(c[4].rstrip("%")) < 100 for c in table.values())
    # uploads: objects and MiB per second, from what the markers counted
    assert float(table["local"][8]) > 0 and float(table["s3"][9]) > 0
    assert "local     read" in report and "ray-data  text_encode" in report
    assert float(table["local"][-3]) > 0 and float(table["ray-data"][-3]) > 0  # actor RSS
    # marginal rates (once full) beside the start-to-end ones, priced against the raw loop
    assert float(table["raw"][-1]) == 1.0 and float(table["local"][-2]) > 0
    assert abs(float(table["local"][-1]) - float(table["local"][-2]) / raw) < 0.01
    assert "images/s per core" in report
    encode = report.split("image encode at 64x64")[1].splitlines()
    assert [line.split()[0] for line in encode[2:5]] == ["jpeg", "png", "webp"]
    assert all(float(x) > 0 for line in encode[2:5] for x in line.split()[1:])
    # what each mode wrote is there: the pipeline's commit and Ray Data's Parquet rows
    assert os.path.exists(tmp_path / "local" / "_SUCCESS")
    assert pq.read_table(tmp_path / "ray-data", columns=["id"]).num_rows == 300


def test_bench_plans_a_generated_parquet(tmp_path):
    report = run_bench(_bench_args(tmp_path, plan_rows=200_000))
    assert report.startswith("plan of 200,000 prompts") and "200 shards" in report, report


def test_bench_quality_mode_runs_the_scorers_and_prints_the_ratio(ray_local, tmp_path):
    report = run_bench(_bench_args(tmp_path, prompts=64, skip_s3=True, skip_ray_data=True,
                                   encode_size=0, repeat=1, quality=True))
    table = {cells[0]: cells for cells in map(str.split, report.split("per-stage")[0]
                                              .splitlines()) if cells and cells[0] in
             ("raw", "local", "quality")}
    assert set(table) == {"raw", "local", "quality"} and int(table["quality"][1]) == 64
    ratio = float(report.split("scorers: ")[1].split("x")[0])
    assert abs(ratio - float(table["quality"][3]) / float(table["local"][3])) < 0.02, report
    scored = pq.read_table(tmp_path / "quality" / "00000.parquet",
                           columns=["phash", "ahash", "scene_match"])
    for column in scored.columns:  # the quality mode really scored, scene prompts included
        assert column.null_count == 0
    assert not os.path.exists(tmp_path / "local" / "_duplicates.pq")  # local: none
    assert os.path.exists(tmp_path / "quality" / "_duplicates.pq")
    print(report)


def test_the_raw_loop_is_one_pipeline_call_per_batch_and_invariance_one_per_image():
    import types

    import torch

    from models.base import GenerationParams
    from pipeline.bench import _draw_alone, _draw_batch

    calls = []

    def pipe(**kwargs):
        calls.append(kwargs)
        return types.SimpleNamespace(images=[0] * len(kwargs["prompt"]))
    pipe.device = torch.device("cpu")
    model = types.SimpleNamespace(pipe=pipe, encode_prompt=lambda p: ("embeds", p),
                                  generate=lambda e, s, p: calls.append((e, s)))
    params = GenerationParams(64, 64, steps=4, guidance_scale=7.5)
    _draw_batch(model, ["a", "b", "c"], [1, 2, 3], params)
    assert len(calls) == 1 and calls[0]["prompt"] == ["a", "b", "c"]
    assert [g.initial_seed() for g in calls[0]["generator"]] == [1, 2, 3]
    assert calls[0]["num_inference_steps"] == 4 and calls[0]["guidance_scale"] == 7.5
    calls.clear()
    _draw_alone(model, ["a", "b"], [1, 2], params)
    assert calls == [(("embeds", ["a"]), [1]), (("embeds", ["b"]), [2])]


def test_the_simulated_device_table_sets_the_pipeline_against_its_limit(ray_local, tmp_path):
    """One run: a single-actor cell beside Ray Data, then four actors sharing the node."""
    args = _bench_args(tmp_path, device_table=True, device_seconds=1.0, device_rates=(64,),
                       device_formats=("jpeg",), size=64, batch_size=8, shard_size=16,
                       capacity_seconds=0.3, device_actors=4, device_actor_rate=16)
    table, several = device_table(args).split("4 actors on one node")
    rows = [line.split() for line in table.splitlines() if line.strip().startswith("jpeg")]
    assert len(rows) == 1, table
    fmt, rate, capacity, limit, pipe, vs, rd, rd_vs = rows[0]
    assert int(rate) == 64 and float(limit) == min(64.0, float(capacity))
    assert float(pipe) > 0 and abs(float(vs) - float(pipe) / float(limit)) < 0.01
    assert float(rd) > 0 and abs(float(rd_vs) - float(rd) / float(limit)) < 0.01
    # the cell ran the simulated device: 64 images committed, every one a success
    success = json.loads((tmp_path / "device-jpeg-64" / "_SUCCESS").read_text())
    assert success["successes"] == 64 and success["failed"] == 0
    _assert_several_actors(several)


def _assert_several_actors(report: str) -> None:
    rows = [line.split() for line in report.splitlines() if line.strip().startswith("jpeg")]
    actors, node = rows[:-1], rows[-1]
    assert node[1] == "node" and actors, report
    # every actor that drew: its place on the node, a 0.5 CPU share, its store threads
    assert all(a[2] == "0.5" and int(a[3]) in (0, 1) for a in actors), report
    assert len({a[1] for a in actors}) == len(actors)  # distinct places on the node
    # the node's totals: the threads of its actors (2 cores: 2 at most), every image
    assert int(node[3]) == sum(int(a[3]) for a in actors) <= 2
    assert int(node[4]) == sum(int(a[4]) for a in actors) == 64
    assert abs(float(node[7]) - float(node[5]) / float(node[6])) < 0.01
    assert float(node[6]) == min(64.0, float(report.split("capacity ")[1].split("/s")[0]))


def test_bench_prints_the_batched_ar_rows_and_their_ratio(ray_local, tmp_path):
    from models.autoregressive import ARConfig, ARImageModel
    from models.encoders import TextEncoder, save_tiny_encoder

    folder = tmp_path / "tiny-ar"
    save_tiny_encoder(str(folder / "encoder"))
    model = ARImageModel.from_config(ARConfig.tiny(encoder="encoder"),
                                     TextEncoder(str(folder / "encoder")))
    model.save_pretrained(str(folder))
    report = run_bench(_bench_args(tmp_path / "work", family="autoregressive",
                                   model=str(folder), prompts=16, batch_size=8, shard_size=16,
                                   skip_s3=True, skip_ray_data=True, encode_size=0, repeat=1))
    table = {cells[0]: cells for cells in map(str.split, report.split("per-stage")[0]
                                              .splitlines()) if cells and cells[0] in
             ("raw", "local", "ar-b1", "ar-b16")}
    assert set(table) == {"raw", "local", "ar-b1", "ar-b16"}, report
    assert int(table["ar-b1"][1]) == int(table["ar-b16"][1]) == 32  # their own 32 prompts
    one, sixteen = float(table["ar-b1"][3]), float(table["ar-b16"][3])
    assert one > 0 and sixteen > 0
    ratio = float(report.split("batch 16 draws ")[1].split("x")[0])
    assert abs(ratio - sixteen / one) < 0.05 * ratio, report
