"""The malformed-input corpus (issue 5, requirement 5): each case either stops the job with
one clear paragraph before any actor starts, or quarantines its rows with a status and a
message while the rest of the job commits.

Covered elsewhere: missing prompt column, wrong type, glob matching nothing, not Parquet,
truncated footer and differing schemas (test_sources.py); null, empty, whitespace-only,
numeric-looking, control characters, mixed scripts and in-shard duplicate ids
(test_poison.py). Here: over-long prompts, invalid UTF-8 (lone surrogates), duplicate-id
policies across shards, zero-row files, unreadable paths, and the CLI's error paragraph.
Local ``chmod 000`` cannot make a file unreadable to root (the CI user), so the
unreadable path is an S3 bucket that answers 403, through tests/faultproxy.py.
"""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.input.resolve import resolve_input
from pipeline.input.shards import plan_shards
from pipeline.input.sources import InputError
from pipeline.output.storage import OutputFolder
from pipeline.output.verify import verify_output
from pipeline.runner import make_plan, run_job
from pipeline.spec import InputSpec, build_spec
from pipeline.stages.samples import build_samples
from tests.conftest import release_shared_ray, write_prompts


def invalid_utf8_strings(values: list[bytes | None]) -> pa.Array:
    """A string array holding raw bytes, built from buffers so nothing validates them:
    what a writer that does not check UTF-8 (or one that writes CESU-8 surrogates) leaves."""
    data = b"".join(v or b"" for v in values)
    offsets = np.cumsum([0] + [len(v or b"") for v in values]).astype(np.int32)
    valid = np.packbits([v is not None for v in values], bitorder="little")
    return pa.Array.from_buffers(pa.string(), len(values), [
        pa.py_buffer(valid.tobytes()), pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])


def test_bad_input_is_one_paragraph_from_the_cli_before_any_actor(tmp_path, capsys):
    import ray

    release_shared_ray()  # whichever module ran before in this process may have left it up
    src = write_prompts(tmp_path / "p.parquet", ["x"], caption=["c"])
    job = tmp_path / "job.yaml"
    job.write_text(f"input: {{path: {src}, prompt_column: text}}\nmodel: {{family: 'null'}}\n"
                   f"output: {{path: {tmp_path / 'out'}}}\n")
    assert main(["run", str(job), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "column 'text' is not in the input; available columns: prompt, caption" in err
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


def test_long_prompts_invalid_utf8_and_mixed_scripts_in_one_job(ray_local, tmp_path, tiny_gan):
    """Through real actors: nothing raises inside a worker; every row has its outcome."""
    words = "a small red circle on the left on a blue background".split()
    long_prompt = " ".join((words * 60)[:600])
    prompts = invalid_utf8_strings([
        b"a large white square at the top", long_prompt.encode(),
        b"a red circle \xff\xfe on blue", b"lone surrogate \xed\xa0\x80 here",
        "卡通风格的人物 مرحبا بالعالم 🎨".encode(), b"a green triangle", b"a purple square"])
    table = pa.table({
        "prompt": prompts,
        "id": invalid_utf8_strings([b"a", b"b", b"c", b"d", b"e", b"bad-\xff-id", b"g"]),
        "note": invalid_utf8_strings([b"ok", None, b"x\xffy", b"", b"", b"", b""])})
    pq.write_table(table, tmp_path / "p.parquet")
    assert len(long_prompt.split()) == 600
    out = tmp_path / "out"
    spec = build_spec({"input": {"path": str(tmp_path / "p.parquet"), "id_column": "id"},
                       "model": {"path": tiny_gan},
                       "output": {"path": str(out), "format": "webdataset"},
                       "runtime": {"shard_size": 4, "batch_size": 4, "actors": 1}})
    manifest = run_job(spec, show_progress=False)
    rows = [r for n in ("00000", "00001") for r in pq.read_table(out / f"{n}.parquet").to_pylist()]
    status = [(r["status"], r["error_message"]) for r in rows]
    assert status[0] == status[1] == status[4] == status[6] == ("success", None)
    assert rows[1]["truncated"] is True and rows[0]["truncated"] is False
    assert json.loads((out / "00000_stats.json").read_text())["truncated"] == 1
    assert status[2] == ("error", "prompt is not valid UTF-8 (byte 13: invalid start byte)")
    assert rows[2]["prompt"] == "a red circle \\xff\\xfe on blue"  # visible, never dropped
    assert status[3] == ("error", "prompt is not valid UTF-8 (byte 15: invalid continuation "
                                  "byte)")
    assert status[5] == ("error", "id is not valid UTF-8 (byte 4: invalid start byte)")
    assert rows[4]["prompt"] == "卡通风格的人物 مرحبا بالعالم 🎨"
    assert rows[2]["note"] == "x\\xffy"  # other input columns are repaired, not copied raw
    assert manifest["successes"] == 4 and manifest["failed"] == 3
    assert verify_output(OutputFolder(str(out))).ok


def _samples(tmp_path, ids, policy, shard_size):
    src = write_prompts(tmp_path / "p.parquet", [f"p{i}" for i in range(len(ids))], id=ids)
    spec = build_spec({"input": {"path": src, "id_column": "id", "duplicate_ids": policy},
                       "model": {"family": "null"}, "runtime": {"shard_size": shard_size}})
    plan = make_plan(spec)
    return [s for shard in plan_shards(plan.inputs, shard_size)
            for s in build_samples(next(shard.segments[0].read({})), shard, spec, plan.keys)]


def test_duplicate_id_policies(tmp_path):
    ids = ["a", "b", "a", "c", "a", "c"]
    with pytest.raises(InputError, match=r"ids repeat .*'a' \(3 times\), 'c' \(2 times\)"):
        _samples(tmp_path, ids, "error", 10)
    keep = _samples(tmp_path, ids, "keep", 10)
    assert all(s.status == "pending" for s in keep)
    assert len({s.key for s in keep}) == 6  # keys are positional: never collide
    assert keep[0].seed == keep[2].seed  # same id, same seed: documented in docs/job-spec.md


def test_duplicate_ids_are_found_across_shards_and_files(tmp_path):
    """The plan hashes the id column in buckets: repeats in other shards and other files
    are found, with bounded memory (here: forced to 3 buckets of a few hashes each)."""
    from pipeline.input.duplicates import find_duplicate_ids

    (tmp_path / "in").mkdir()
    write_prompts(tmp_path / "in" / "1.parquet", ["p"] * 5, id=["a", "b", "c", "d", None])
    write_prompts(tmp_path / "in" / "2.parquet", ["p"] * 4, id=["e", "b", "f", None])
    inputs = resolve_input(InputSpec(path=str(tmp_path / "in"), id_column="id"), {})
    assert find_duplicate_ids(inputs, "id", {}, bucket_hashes=3) == [("b", 2)]
    spec = build_spec({"input": {"path": str(tmp_path / "in"), "id_column": "id"},
                       "model": {"family": "null"}, "runtime": {"shard_size": 2}})
    with pytest.raises(InputError, match=r"'b' \(2 times\)"):
        make_plan(spec)  # before any actor: `synthset plan` says it too


def test_a_million_ids_are_checked_in_seconds(tmp_path):
    import time

    from pipeline.input.duplicates import find_duplicate_ids

    ids = [f"id-{i:07d}" for i in range(1_000_000)]
    ids[999_999] = ids[3]  # one repeat, far apart
    src = write_prompts(tmp_path / "big.parquet", ["p"] * len(ids), id=ids)
    inputs = resolve_input(InputSpec(path=src, id_column="id"), {})
    t = time.perf_counter()
    found = find_duplicate_ids(inputs, "id", {}, bucket_hashes=300_000)  # 4 buckets
    assert found == [("id-0000003", 2)]
    assert time.perf_counter() - t < 60  # a few seconds here; generous for a loaded CI box


def test_zero_row_file_is_a_completed_job_with_no_images_when_allowed(tmp_path):
    src = write_prompts(tmp_path / "empty.parquet", [])
    out = tmp_path / "out"
    spec = build_spec({"input": {"path": src, "allow_empty": True}, "model": {"family": "null"},
                       "output": {"path": str(out)}})
    manifest = run_job(spec, show_progress=False)  # no shard, so no Ray and no actor
    assert manifest["shards_committed"] == 0 and manifest["successes"] == manifest["failed"] == 0
    assert manifest["plan"]["prompts"] == 0
    assert verify_output(OutputFolder(str(out))).ok


def test_zero_row_file_among_others_is_skipped(tmp_path):
    write_prompts(tmp_path / "a.parquet", ["x", "y"])
    write_prompts(tmp_path / "b.parquet", [])
    write_prompts(tmp_path / "c.parquet", ["z"])
    inputs = resolve_input(InputSpec(path=str(tmp_path)), {})
    shards = list(plan_shards(inputs, 2))
    assert [[(g.name, g.start, g.stop) for g in s.segments] for s in shards] == [
        [("a.parquet", 0, 2)], [("c.parquet", 0, 1)]]


def test_unreadable_s3_paths_name_the_url(s3_bucket):
    from tests.faultproxy import FaultProxy

    bucket, options = s3_bucket
    with pytest.raises(InputError, match="s3://no-such-bucket-x/p.parquet: no such file"):
        resolve_input(InputSpec(path="s3://no-such-bucket-x/p.parquet"), options)
    proxy = FaultProxy(options["endpoint_url"])
    proxy.outage = "403"
    try:
        with pytest.raises(InputError, match=f"s3://{bucket}/p.parquet: permission denied "
                                             r"\(Access Denied\)"):
            resolve_input(InputSpec(path=f"s3://{bucket}/p.parquet"),
                          {"endpoint_url": proxy.url})
    finally:
        proxy.close()
