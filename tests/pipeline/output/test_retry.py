"""``synthset run JOB --retry-failed`` on real local Ray: only failed samples are regenerated.

How samples fail the first time, honestly: the model folder's text encoder has NaN in
the embedding row of the token "zebra" (a broken checkpoint), so every prompt with that
word draws a blank image and is recorded as ``status=error``; every other prompt never
reads that row and draws exactly what the fixed model draws. The weights are then fixed
in place, as an operator would, which leaves the job's fingerprint (spec + input)
unchanged, and ``--retry-failed`` regenerates only those samples.
"""

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
import yaml

from models.encoders import TextEncoder, save_tiny_encoder
from models.gan import GanConfig, GanImageModel
from pipeline.cli import main
from pipeline.output.storage import OutputFolder
from pipeline.output.verify import verify_output
from pipeline.runner import JobFailed, run_job
from pipeline.spec import build_spec
from tests.conftest import write_prompts

PROMPTS = ["a red circle on the left", "a zebra in the center", "a blue square at the top",
           None, "a green triangle", "a white square at the bottom", "a purple circle",
           "an orange square", "a zebra on a black background", "a small yellow circle"]
FAILING = {"000000001", "000020000"}  # the zebra prompts; 000000003 (null) fails for good
ENCODER_WEIGHTS = os.path.join("encoder", "model.safetensors")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny GAN folder with its encoder inside, plus broken and fixed encoder weights."""
    import torch
    from safetensors.torch import load_file, save_file

    path = str(tmp_path_factory.mktemp("gan") / "model")
    save_tiny_encoder(os.path.join(path, "encoder"))
    encoder = TextEncoder(os.path.join(path, "encoder"))
    GanImageModel.from_config(GanConfig.tiny(encoder="encoder"), encoder).save_pretrained(path)
    fixed = os.path.join(path, "..", "fixed.safetensors")
    shutil.copy(os.path.join(path, ENCODER_WEIGHTS), fixed)
    state = load_file(fixed)
    state["embeddings.word_embeddings.weight"][encoder.tokenizer.convert_tokens_to_ids(
        "zebra")] = torch.nan
    broken = os.path.join(path, "..", "broken.safetensors")
    save_file(state, broken, metadata={"format": "pt"})

    def weights(which: str) -> str:
        shutil.copy(broken if which == "broken" else fixed, os.path.join(path, ENCODER_WEIGHTS))
        return path
    return weights


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("in") / "p.parquet", PROMPTS)


def _raw(out, src, model_path, fmt, options=None, **runtime):
    return {
        "input": {"path": src}, "model": {"path": model_path},
        "output": {"path": str(out), "format": fmt, "retries": 1, "retry_backoff_s": 0.01},
        # redraws in other batches match the reference byte for byte only batch-invariant
        "runtime": {"shard_size": 4, "batch_size": 2, "actors": 1, "progress_interval_s": 0.2,
                    "deterministic": True, **runtime},
        "storage_options": options or {}}


def _spec(*args, **kwargs):
    return build_spec(_raw(*args, **kwargs))


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory, src, model):
    """Clean runs with the fixed weights, one per format, made on first use."""
    made = {}

    def get(fmt):
        if fmt not in made:
            out = tmp_path_factory.mktemp("ref") / fmt
            run_job(_spec(out, src, model("fixed"), fmt), show_progress=False)
            made[fmt] = _dataset(OutputFolder(str(out)))
        return made[fmt]
    return get


def _dataset(folder: OutputFolder) -> dict:
    """Rows by key, and every marker's data objects with their checksums."""
    rows, objects = {}, {}
    for name in sorted(n for n in folder.list() if n.endswith("_stats.json")):
        objects.update(json.loads(folder.read_bytes(name))["objects"])
        with folder.open(name.replace("_stats.json", ".parquet")) as f:
            table = pq.read_table(f)
        for r in table.drop_columns([c for c in ("image",) if c in table.column_names]) \
                .to_pylist():
            rows[r["key"]] = r
    return {"rows": rows, "objects": objects}


def _snapshot(out):
    """Every file's bytes and mtime, by name."""
    found = {}
    for root, _, names in os.walk(out):
        for n in names:
            p = os.path.join(root, n)
            found[os.path.relpath(p, out)] = (os.stat(p).st_mtime_ns, open(p, "rb").read())
    return found


def _failed_keys(rows):
    return {k for k, r in rows.items() if r["status"] == "error"}


@pytest.mark.parametrize("fmt", ["files", "webdataset", "parquet"])
def test_retry_failed_regenerates_only_failed_samples(ray_local, reference, tmp_path, src, model,
                                                      fmt):
    out = tmp_path / "out"
    first = run_job(_spec(out, src, model("broken"), fmt), show_progress=False)
    assert first["failed"] == 3
    before = _snapshot(out)
    assert _failed_keys(_dataset(OutputFolder(str(out)))["rows"]) == FAILING | {"000000003"}

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_raw(out, src, model("fixed"), fmt)))
    assert main(["run", str(job), "--retry-failed", "--quiet"]) == 0
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert manifest["failed"] == 1 and manifest["successes"] == 9
    report = verify_output(OutputFolder(str(out)))
    assert report.ok, report.format()
    got, want = _dataset(OutputFolder(str(out))), reference(fmt)
    assert got["rows"] == want["rows"]  # keys, seeds, sha256 per key, every column
    assert got["objects"] == want["objects"]  # tars and Parquet files byte for byte
    after = _snapshot(out)
    assert after["00001_stats.json"] == before["00001_stats.json"]  # a shard with no failure
    assert json.loads(after["00000_stats.json"][1])["retried"] == 1  # not the null row
    if fmt == "files":
        kept = [n for n in before if n.endswith(".png")]
        assert len(kept) == 7 and all(after[n] == before[n] for n in kept)  # not rewritten
        assert {os.path.basename(n)[:-4] for n in set(after) - set(before)} == FAILING


def test_retry_leaves_shards_whose_only_failures_are_bad_rows(ray_local, tmp_path, src, model):
    """The null prompt fails for good: --retry-failed rewrites nothing for it."""
    out = tmp_path / "out"
    spec = _spec(out, src, model("fixed"), "webdataset")
    assert run_job(spec, show_progress=False)["failed"] == 1
    before = _snapshot(out)
    manifest = run_job(spec, show_progress=False, retry_failed=True)
    assert manifest["failed"] == 1
    after = _snapshot(out)
    shard_files = {n for n in before if n.startswith("0000")}
    assert shard_files and all(after[n] == before[n] for n in shard_files)


def test_retry_interrupted_before_the_marker_converges(ray_local, reference, s3_endpoint, src,
                                                       model):
    """A retry dies after rewriting the tar and metadata of shard 0, before replacing its
    marker (a storage outage that starts right after the metadata PUT). ``verify`` names
    the mismatch; rerunning ``--retry-failed`` completes that commit."""
    import s3fs

    from tests.faultproxy import FaultProxy

    direct = {"endpoint_url": s3_endpoint}
    s3fs.S3FileSystem(**direct).mkdir("retry")
    url = "s3://retry/wds"
    proxy = FaultProxy(s3_endpoint)
    via_proxy = {"endpoint_url": proxy.url}
    try:
        run_job(_spec(url, src, model("broken"), "webdataset", via_proxy, lock_timeout_s=1),
                show_progress=False)
        old_marker = OutputFolder(url, direct).read_bytes("00000_stats.json")
        proxy.trip_on = "/retry/wds/00000.parquet"
        spec = _spec(url, src, model("fixed"), "webdataset", via_proxy, lock_timeout_s=1,
                     max_shard_attempts=1)
        with pytest.raises(JobFailed):
            run_job(spec, show_progress=False, retry_failed=True)
        folder = OutputFolder(url, direct)
        assert folder.read_bytes("00000_stats.json") == old_marker  # the old marker stands
        report = verify_output(folder)
        assert "00000.tar: sha256 mismatch" in report.format()
        assert "_SUCCESS is missing" in report.format()
        proxy.outage, proxy.trip_on = None, None
        manifest = run_job(spec, show_progress=False, retry_failed=True)
    finally:
        proxy.close()
    assert manifest["failed"] == 1
    assert verify_output(folder).ok, verify_output(folder).format()
    got = _dataset(folder)
    want = reference("webdataset")
    assert got["rows"] == want["rows"] and got["objects"] == want["objects"]


def test_retry_failed_needs_an_earlier_run(tmp_path, src, model):
    from pipeline.spec import SpecError

    with pytest.raises(SpecError, match="holds no run of this job"):
        run_job(_spec(tmp_path / "none", src, model("fixed"), "files"), retry_failed=True)
    with pytest.raises(SpecError, match="cannot be combined with --overwrite"):
        run_job(_spec(tmp_path / "none", src, model("fixed"), "files"), retry_failed=True,
                overwrite=True)
