"""Each output format written by a real job to a real S3 server (moto), read back by its
real consumer, and checked by ``synthset verify`` before and after damage."""

import hashlib
import io
import json

import pyarrow.parquet as pq
import pytest
import s3fs

from pipeline.cli import main
from pipeline.output.manifest import read_entries
from pipeline.output.storage import OutputFolder
from pipeline.runner import run_job
from pipeline.spec import build_spec
from tests.conftest import write_prompts

PROMPTS = [f"a small blue square at the bottom on a red background, take {i}" for i in range(9)]
FORMATS = ("files", "webdataset", "parquet")


@pytest.fixture(scope="module")
def outputs(ray_local, s3_endpoint, tiny_gan, tmp_path_factory):
    """One job per format into one bucket: format -> (url, storage_options, s3fs)."""
    options = {"endpoint_url": s3_endpoint}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("formats")
    src = write_prompts(tmp_path_factory.mktemp("in") / "p.parquet", PROMPTS[:4] + [None]
                        + PROMPTS[4:], category=list("abcdefghij"))
    result = {}
    for fmt in FORMATS:
        raw = {"input": {"path": src}, "model": {"family": "gan", "path": tiny_gan},
               "output": {"path": f"s3://formats/{fmt}", "format": fmt},
               "runtime": {"shard_size": 4, "batch_size": 4, "progress_interval_s": 0.2},
               "storage_options": options}
        run_job(build_spec(raw), show_progress=False)
        result[fmt] = (f"s3://formats/{fmt}", options, fs)
    return result


def _rows(fs, url) -> list[dict]:
    names = sorted(p for p in fs.find(url) if p.endswith(".parquet"))
    return [r for n in names for r in pq.read_table(n, filesystem=fs,
                                                    columns=["key", "status", "sha256", "file",
                                                             "prompt"]).to_pylist()]


def _download(fs, url, suffix, tmp_path) -> list[str]:
    names = sorted(p for p in fs.find(url) if p.endswith(suffix))
    fs.get(names, str(tmp_path) + "/")
    return [str(tmp_path / n.rsplit("/", 1)[1]) for n in names]


def test_layouts_markers_and_manifest(outputs):
    for fmt, (url, options, fs) in outputs.items():
        names = sorted(p.split(f"/{fmt}/", 1)[1] for p in fs.find(url))
        top = [n for n in names if "/" not in n]
        data = {"files": ["00000.parquet"], "webdataset": ["00000.parquet", "00000.tar"],
                "parquet": ["00000.parquet"]}[fmt]
        assert [n for n in top if n.startswith("00000")] == data + ["00000_stats.json"]
        manifest = json.loads(fs.cat(f"{url}/_SUCCESS"))
        entries = read_entries(OutputFolder(url, options), manifest)
        assert [s["shard_name"] for s in entries] == ["00000", "00001", "00002"]
        assert manifest["successes"] == 9 and manifest["failed"] == 1
        assert manifest["manifest"]["name"] == "_manifest.pq"
        for shard in entries:
            for name, sha in shard["objects"].items():
                assert hashlib.sha256(fs.cat(f"{url}/{name}")).hexdigest() == sha
        stats = json.loads(fs.cat(f"{url}/00001_stats.json"))
        assert stats["format"] == fmt and stats["retries"] == 0
        assert stats["uploads"]["objects"] == {"files": 4, "webdataset": 2, "parquet": 1}[fmt]
    # the same seeds give the same image bytes whatever the container
    by_format = {fmt: {r["key"]: r["sha256"] for r in _rows(fs, url)}
                 for fmt, (url, _, fs) in outputs.items()}
    assert by_format["files"] == by_format["webdataset"] == by_format["parquet"]


def test_webdataset_loads_in_webdataset_and_datasets(outputs, tmp_path):
    import datasets
    import webdataset as wds

    url, _, fs = outputs["webdataset"]
    rows = {r["key"]: r for r in _rows(fs, url)}
    assert len(rows) == 10 and sum(r["status"] == "error" for r in rows.values()) == 1
    assert rows["000010001"]["file"] == "00001.tar/000010001.png"
    tars = _download(fs, url, ".tar", tmp_path)
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    assert len(samples) == 9
    for s in samples:
        row = rows[s["__key__"]]
        assert hashlib.sha256(s["png"]).hexdigest() == row["sha256"]
        assert s["txt"].decode() == row["prompt"]
        meta = json.loads(s["json"])
        assert meta["key"] == s["__key__"] and meta["sha256"] == row["sha256"]
    assert len({tuple(sorted(json.loads(s["json"]))) for s in samples}) == 1  # stable schema
    ds = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 9 and ds[0]["png"].size == (16, 16)
    assert ds[8]["json"]["prompt"] == rows[ds[8]["__key__"]]["prompt"]


def test_parquet_loads_in_datasets_and_pyarrow(outputs, tmp_path):
    import datasets
    from PIL import Image

    url, _, fs = outputs["parquet"]
    files = _download(fs, url, ".parquet", tmp_path)
    table = pq.read_table(files[1])
    assert table.schema.field("image").type.names == ["bytes", "path"]
    hf = json.loads(table.schema.metadata[b"huggingface"])
    assert hf["info"]["features"]["image"] == {"_type": "Image"}
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["error", "success", "success", "success"]
    assert rows[0]["image"] is None and rows[0]["category"] == "e"
    for r in rows[1:]:
        assert hashlib.sha256(r["image"]["bytes"]).hexdigest() == r["sha256"]
        assert Image.open(io.BytesIO(r["image"]["bytes"])).size == (16, 16)
    ds = datasets.load_dataset("parquet", data_files={"train": files}, split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert len(ds) == 10 and isinstance(ds[0]["image"], Image.Image)
    assert ds[0]["image"].size == (16, 16) and ds[4]["image"] is None


def _verify(capsys, url, options) -> tuple[int, str]:
    code = main(["verify", url, "--storage-options", json.dumps(options)])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("fmt,damage,message", [
    ("webdataset", "corrupt:00001.tar", "00001.tar: sha256 mismatch (marker 00001_stats.json"),
    ("webdataset", "delete:00002.tar", "00002.tar: missing (listed in 00002_stats.json)"),
    ("webdataset", "add:00003.tar", "00003.tar: orphan object"),
    ("files", "delete:00001/000010002.png", "00001/000010002.png: missing image for key "
                                            "000010002"),
    ("files", "corrupt:00000/000000001.png", "00000/000000001.png: sha256 mismatch with its "
                                             "row in 00000.parquet"),
    ("parquet", "corrupt:00002.parquet", "00002.parquet: sha256 mismatch"),
    ("parquet", "delete:00001_stats.json", "2 of 3 shards are committed"),
])
def test_verify_passes_then_names_the_damage(outputs, capsys, fmt, damage, message):
    url, options, fs = outputs[fmt]
    code, out = _verify(capsys, url, options)
    assert code == 0 and out.startswith(f"OK {url}: 3 shards, 9 images, 1 failed rows")
    action, name = damage.split(":")
    path = f"{url}/{name}"
    saved = fs.cat(path) if action != "add" else None
    if action == "corrupt":
        fs.pipe(path, saved[:-1] + bytes([saved[-1] ^ 1]))
    elif action == "delete":
        fs.rm(path)
    else:
        fs.pipe(path, b"stray")
    try:
        code, out = _verify(capsys, url, options)
        assert code == 1 and out.startswith(f"FAILED {url}") and message in out, out
    finally:
        fs.pipe(path, saved) if saved is not None else fs.rm(path)
    assert _verify(capsys, url, options)[0] == 0


def test_parquet_shard_compresses_every_column_but_the_image_bytes(tmp_path):
    """Nested pass-through columns have leaf paths of their own (tags.list.element):
    each must get the codec, not fall back to none."""
    import pyarrow as pa

    from pipeline.output.formats.parquet import ParquetShardWriter
    from pipeline.output.storage import OutputFolder

    writer = ParquetShardWriter(OutputFolder(str(tmp_path)), "00000", "png")
    writer.put_image("000000000", b"\x89PNG fake image bytes")
    writer.write_objects(pa.table({"key": ["000000000"], "status": ["success"],
                                   "tags": [["a", "b"]], "meta": [{"a": 1}]}))
    group = pq.ParquetFile(tmp_path / "00000.parquet").metadata.row_group(0)
    codecs = {group.column(i).path_in_schema: group.column(i).compression
              for i in range(group.num_columns)}
    assert codecs.pop("image.bytes") == "UNCOMPRESSED"
    assert set(codecs) == {"key", "status", "tags.list.element", "meta.a", "image.path"}
    assert set(codecs.values()) == {"ZSTD"}
