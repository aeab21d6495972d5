"""End-to-end jobs on a real local Ray: outputs, markers, resume, determinism, guards."""

import hashlib
import json
import os

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.output.manifest import read_entries
from pipeline.output.progress import read_status
from pipeline.output.storage import OutputFolder
from pipeline.runner import run_job
from pipeline.spec import SpecError, build_spec
from tests.conftest import write_prompts

PROMPTS = [f"a small red circle on the left on a blue background, take {i}" for i in range(13)]


def _spec(tmp_path, input_path, out="out", **overrides):
    raw = {"name": "t", "input": {"path": str(input_path)},
           "model": {"family": "gan", "path": overrides.pop("model_path")},
           "output": {"path": str(tmp_path / out)},
           "runtime": {"shard_size": 5, "batch_size": 3, "actors": 1,
                       "progress_interval_s": 0.2}}
    return build_spec(raw, [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])


def _images_by_id(out) -> dict:
    rows = pq.read_table(f"{out}/*.parquet" if False else out, columns=None) \
        if False else None
    del rows
    result = {}
    for name in sorted(os.listdir(out)):
        if name.endswith(".parquet"):
            for r in pq.read_table(os.path.join(out, name)).to_pylist():
                result[(r["id"], r["image_index"])] = r["sha256"]
    return result


def test_end_to_end_files_layout(ray_local, tmp_path, tiny_gan):
    src = write_prompts(tmp_path / "p.parquet", PROMPTS + [None, "   "],
                        row_group_size=4, category=list("abcdefghijklmno"))
    spec = _spec(tmp_path, src, model_path=tiny_gan, generation__images_per_prompt=2,
                 storage_options__secret="do-not-leak")
    manifest = run_job(spec, show_progress=False)
    out = tmp_path / "out"
    assert sorted(n for n in os.listdir(out) if not n[0].isdigit()) == [
        "_SUCCESS", "_job.json", "_manifest.pq", "_progress.json"]
    entries = read_entries(OutputFolder(str(out)), manifest)
    assert [m["shard_name"] for m in entries] == ["00000", "00001", "00002"]
    assert manifest["successes"] == 26 and manifest["failed"] == 4
    rows = [r for n in ("00000", "00001", "00002")
            for r in pq.read_table(out / f"{n}.parquet").to_pylist()]
    assert len(rows) == 30 and len({r["key"] for r in rows}) == 30
    assert rows[0]["key"] == "000000000" and rows[1]["key"] == "000000001"
    assert rows[-1]["key"] == "000020009"
    for r in rows:
        assert r["category"] == "abcdefghijklmno"[int(r["id"].split("#")[1])]
        if r["status"] == "success":
            data = (out / r["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == r["sha256"]
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            assert (r["width"], r["height"]) == (16, 16)
            assert r["model"] == tiny_gan
        else:
            assert r["error_message"] in ("prompt is null", "prompt is empty or whitespace only")
            assert r["file"] is None
    assert rows[0]["seed"] != rows[1]["seed"]
    stats = json.loads((out / "00002_stats.json").read_text())
    assert stats["failed"] == 4 and stats["successes"] == 6
    assert "generate" in stats["stage_seconds"]
    job = (out / "_job.json").read_text()
    assert "do-not-leak" not in job and json.loads(job)["plan"]["images"] == 30
    status = read_status(OutputFolder(str(out)))
    assert status["state"] == "complete" and status["shards_done"] == 3
    assert status["images_done"] == 26


def test_resume_reruns_only_shards_without_marker(ray_local, tmp_path, tiny_gan):
    src = write_prompts(tmp_path / "p.parquet", PROMPTS)
    spec = _spec(tmp_path, src, model_path=tiny_gan)
    run_job(spec, show_progress=False)
    out = tmp_path / "out"
    before = _images_by_id(out)
    kept = (out / "00000_stats.json").read_text()
    # a crash mid-shard 1: its marker was never written and an image is half there
    (out / "00001_stats.json").unlink()
    (out / "_SUCCESS").unlink()
    (out / "00001" / "000010002.png").write_bytes(b"\x89PNG partial")
    run_job(spec, show_progress=False)
    assert (out / "00000_stats.json").read_text() == kept  # not regenerated
    assert _images_by_id(out) == before
    assert (out / "_SUCCESS").exists()
    data = (out / "00001" / "000010002.png").read_bytes()
    assert hashlib.sha256(data).hexdigest() == before[(f"p.parquet#{7}", 0)]


def test_images_do_not_depend_on_shards_batches_or_actors(ray_local, tmp_path, tiny_gan):
    src = write_prompts(tmp_path / "p.parquet", PROMPTS)
    # batch invariance is opt-in (runtime.deterministic: true): what this promise needs
    run_job(_spec(tmp_path, src, "a", model_path=tiny_gan, runtime__shard_size=13,
                  runtime__batch_size=8, runtime__actors=1, runtime__deterministic=True),
            show_progress=False)
    run_job(_spec(tmp_path, src, "b", model_path=tiny_gan, runtime__shard_size=4,
                  runtime__batch_size=3, runtime__actors=2, runtime__deterministic=True),
            show_progress=False)
    a, b = _images_by_id(tmp_path / "a"), _images_by_id(tmp_path / "b")
    assert len(a) == 13 and a == b


def test_changed_spec_is_refused_unless_overwrite(ray_local, tmp_path, tiny_gan, capsys):
    src = write_prompts(tmp_path / "p.parquet", PROMPTS[:3])
    run_job(_spec(tmp_path, src, model_path=tiny_gan), show_progress=False)
    changed = _spec(tmp_path, src, model_path=tiny_gan, generation__seed=7)
    with pytest.raises(SpecError, match="already holds a different job"):
        run_job(changed, show_progress=False)
    run_job(changed, overwrite=True, show_progress=False)
    job = json.loads((tmp_path / "out" / "_job.json").read_text())
    assert job["spec"]["generation"]["seed"] == 7


def test_cli_plan_run_status(ray_local, tmp_path, tiny_gan, capsys):
    src = write_prompts(tmp_path / "p.parquet", PROMPTS[:6])
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {{path: {src}}}\nmodel: {{family: gan, path: {tiny_gan}}}\n"
                   f"output: {{path: {tmp_path / 'out'}}}\nruntime: {{shard_size: 4}}\n")
    assert main(["plan", str(job)]) == 0
    assert "6 prompts, 6 images, 2 shards of 4" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()  # plan allocates and writes nothing
    assert main(["run", str(job), "--quiet"]) == 0
    assert main(["status", str(tmp_path / "out"), "--json"]) == 0
    out = capsys.readouterr().out  # run's summary lines, then the status JSON
    status = json.loads(out[out.index("\n{\n") + 1:])
    assert status["state"] == "complete" and status["images_done"] == 6
    assert main(["run", str(job), "--set", "runtime.bogus=1"]) == 2
    assert "runtime.bogus: unknown key" in capsys.readouterr().err


def test_s3_input_and_output(ray_local, tmp_path, tiny_gan, s3_bucket):
    import s3fs

    bucket, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    local = write_prompts(tmp_path / "p.parquet", PROMPTS[:7])
    fs.put(local, f"{bucket}/prompts/p.parquet")
    raw = {"input": {"path": f"s3://{bucket}/prompts/*.parquet"},
           "model": {"family": "gan", "path": tiny_gan},
           "output": {"path": f"s3://{bucket}/runs/r1", "image_format": "jpeg"},
           "runtime": {"shard_size": 4}, "storage_options": options}
    manifest = run_job(build_spec(raw), show_progress=False)
    assert manifest["successes"] == 7
    names = sorted(p.split("/runs/r1/")[1] for p in fs.find(f"{bucket}/runs/r1"))
    assert names[:3] == ["00000.parquet", "00000/000000000.jpg", "00000/000000001.jpg"]
    assert "00001_stats.json" in names and "_SUCCESS" in names
    rows = pq.read_table(f"{bucket}/runs/r1/00001.parquet", filesystem=fs).to_pylist()
    data = fs.cat(f"{bucket}/runs/r1/{rows[0]['file']}")
    assert hashlib.sha256(data).hexdigest() == rows[0]["sha256"] and data[:2] == b"\xff\xd8"
    status = read_status(OutputFolder(f"s3://{bucket}/runs/r1", options))
    assert status["state"] == "complete"


def test_a_zero_row_input_fails_unless_allowed(tmp_path, capsys):
    """An empty nightly feed is nearly always an upstream failure: exit 2 naming the files,
    before anything is written; input.allow_empty makes it an empty, complete job."""
    (tmp_path / "in").mkdir()
    write_prompts(tmp_path / "in" / "a.parquet", [])
    write_prompts(tmp_path / "in" / "b.parquet", [])
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {{path: {tmp_path / 'in'}}}\nmodel: {{family: gan}}\n"
                   f"output: {{path: {tmp_path / 'out'}}}\n")
    assert main(["run", str(job), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the input has no rows (a.parquet, b.parquet)" in err and "allow_empty" in err
    assert not (tmp_path / "out").exists()
    assert main(["run", str(job), "--quiet", "--set", "input.allow_empty=true"]) == 0
    assert "the input had no rows" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "_SUCCESS").read_text())["shards_committed"] == 0


def test_the_closing_hint_names_real_paths(ray_local, tmp_path, tiny_gan, capsys):
    src = write_prompts(tmp_path / "p.parquet", PROMPTS[:3])
    out = tmp_path / "o"
    assert main(["run", "/dev/null", "--quiet", "--set", f"input.path={src}",
                 "--set", f"model.path={tiny_gan}", "--set", f"output.path={out}",
                 "--set", "output.format=webdataset"]) == 0
    text = capsys.readouterr().out
    assert f"look at: {out}/00000.tar (images), {out}/00000.parquet (metadata)" in text
    assert (out / "00000.tar").exists() and (out / "00000.parquet").exists()


def test_a_complete_job_repairs_itself(ray_local, tmp_path, tiny_gan, capsys):
    """A lost marker is regenerated by a plain rerun; a damaged image by --repair; both
    byte-identical, and _SUCCESS and the report say what was repaired."""
    src = write_prompts(tmp_path / "p.parquet", PROMPTS[:10])
    job = tmp_path / "job.yaml"
    out = tmp_path / "out"
    job.write_text(f"input: {{path: {src}}}\nmodel: {{family: gan, path: {tiny_gan}}}\n"
                   f"output: {{path: {out}}}\nruntime: {{shard_size: 4, actors: 1}}\n")
    assert main(["run", str(job), "--quiet"]) == 0
    original = {p.name: p.read_bytes() for p in out.rglob("*.png")}
    (out / "00001_stats.json").unlink()
    (out / "00001" / "000010002.png").unlink()
    assert main(["run", str(job), "--quiet"]) == 0
    assert "repaired: 1 shard(s) regenerated (00001)" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.rglob("*.png")} == original
    assert (out / "00001_stats.json").exists()
    (out / "00002" / "000020001.png").write_bytes(b"not a png")  # marker stays: damage
    assert main(["run", str(job), "--quiet"]) == 0  # complete by its markers: untouched
    assert main(["verify", str(out)]) == 1
    assert main(["run", str(job), "--quiet", "--repair"]) == 0
    assert "repaired: 1 shard(s) regenerated (00002)" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.rglob("*.png")} == original
    assert main(["verify", str(out)]) == 0
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["repaired"] == ["00002"] and success["shards_committed"] == 3
    assert main(["report", str(out)]) == 0
    assert "regenerated after they were lost or damaged: 00002" in (out / "report.html").read_text()
