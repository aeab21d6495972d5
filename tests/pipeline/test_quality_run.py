"""Quality through the whole job on a real local Ray: scorers, best-of-n, duplicate groups
and the summary in markers, ``_SUCCESS`` and ``status --json``, in the packed formats."""

import json
import tarfile

import pyarrow.parquet as pq

from models import scenes
from pipeline.cli import main
from pipeline.output.storage import OutputFolder
from pipeline.output.verify import verify_output
from pipeline.runner import run_job
from pipeline.spec import build_spec
from tests.conftest import write_prompts

PROMPTS = [scenes.caption(a) for a in scenes.all_combinations()[::151]][:6] + ["a cat"]
QUALITY = {"scorers": ["phash", "scene"], "accept": "scene_match >= 0.8", "max_attempts": 3}


def _run(tmp_path, tiny_gan, name, fmt, shard_size, actors):
    src = write_prompts(tmp_path / "p.parquet", PROMPTS)
    spec = build_spec({"name": name, "input": {"path": src},
                       "model": {"family": "gan", "path": tiny_gan},
                       "generation": {"images_per_prompt": 2},
                       "output": {"path": str(tmp_path / name), "format": fmt},
                       # the same bytes across shard sizes and actors: batch invariance
                       "runtime": {"shard_size": shard_size, "batch_size": 2, "actors": actors,
                                   "deterministic": True},
                       "quality": QUALITY})
    manifest = run_job(spec, show_progress=False)
    rows = [r for p in sorted((tmp_path / name).glob("?????.parquet"))
            for r in pq.read_table(p, columns=[
                "key", "id", "image_index", "seed", "attempt", "accepted", "sha256", "phash",
                "scene_match", "variety", "status"]).to_pylist()]
    return manifest, rows


def test_quality_job_on_ray_is_placement_independent(ray_local, tmp_path, tiny_gan, capsys):
    manifest, rows = _run(tmp_path, tiny_gan, "wds", "webdataset", 3, 1)
    q = manifest["quality"]
    assert q["accepted"] == sum(r["accepted"] for r in rows)
    assert q["accepted"] + q["not_accepted"] == len(rows) == 2 * len(PROMPTS)
    assert q["draws"] > len(rows)  # rejected draws were redrawn (the tiny GAN draws noise)
    assert q["duplicates"]["rows"] == len(rows)
    assert q["variety"]["prompts"] == len(PROMPTS)
    assert (tmp_path / "wds" / "_duplicates.pq").exists()
    assert verify_output(OutputFolder(str(tmp_path / "wds"))).ok
    with tarfile.open(tmp_path / "wds" / "00000.tar") as tar:
        doc = json.load(tar.extractfile(next(m for m in tar if m.name.endswith(".json"))))
    assert {"phash", "scene_match", "scene_failed", "attempt", "accepted", "variety"} <= set(doc)
    assert main(["status", str(tmp_path / "wds"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["quality"] == q
    # the same job in other shards, on two actors, as HF Parquet: the same draws kept
    _, other = _run(tmp_path, tiny_gan, "hf", "parquet", 2, 2)
    pick = ("seed", "attempt", "accepted", "sha256", "phash", "scene_match")
    same = {(r["id"], r["image_index"]): [r[k] for k in pick] for r in rows}
    assert same == {(r["id"], r["image_index"]): [r[k] for k in pick] for r in other}
    hf = pq.read_schema(tmp_path / "hf" / "00000.parquet")
    assert {"image", "phash", "scene_match", "attempt"} <= set(hf.names)
