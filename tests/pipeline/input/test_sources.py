"""Input resolution, schema checks, shard planning and row-group streaming on real Parquet."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.input.resolve import resolve_input
from pipeline.input.shards import key_format, plan_shards
from pipeline.input.sources import InputError, read_rows
from pipeline.runner import make_plan
from pipeline.spec import InputSpec, build_spec
from tests.conftest import write_prompts


def _inputs(path, **kw):
    return resolve_input(InputSpec(path=str(path), **kw), {})


def test_glob_folder_and_file_resolve_in_a_stable_order(tmp_path):
    for name, n in (("b.parquet", 5), ("a.parquet", 3), ("sub/c.parquet", 4)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write_prompts(tmp_path / name, [f"p{i}" for i in range(n)])
    folder = _inputs(tmp_path)
    assert [f.name for f in folder.files] == ["a.parquet", "b.parquet", "sub/c.parquet"]
    assert folder.num_rows == 12
    glob = _inputs(f"{tmp_path}/*.parquet")
    assert [f.name for f in glob.files] == ["a.parquet", "b.parquet"]
    assert _inputs(tmp_path / "a.parquet").num_rows == 3


def test_shards_span_files_and_are_deterministic(tmp_path):
    write_prompts(tmp_path / "a.parquet", [f"a{i}" for i in range(5)])
    write_prompts(tmp_path / "b.parquet", [f"b{i}" for i in range(6)])
    inputs = _inputs(tmp_path)
    shards = list(plan_shards(inputs, 4))
    assert [s.num_rows for s in shards] == [4, 4, 3]
    assert [(g.name, g.start, g.stop) for g in shards[1].segments] == [
        ("a.parquet", 4, 5), ("b.parquet", 0, 3)]
    assert shards == list(plan_shards(_inputs(tmp_path), 4))


def test_read_rows_streams_only_the_row_groups_needed(tmp_path):
    path = write_prompts(tmp_path / "p.parquet", [f"p{i}" for i in range(100)],
                         row_group_size=10)
    parts = list(read_rows(path, 25, 42, {}))
    assert [len(p) for p in parts] == [5, 10, 2]  # three row groups, never the whole file
    assert pa.concat_tables(parts).column("prompt").to_pylist() == [f"p{i}" for i in range(25, 42)]


def test_consecutive_shards_of_one_big_row_group_read_it_once(tmp_path):
    """pandas writes a million rows per group: each shard must not download it again."""
    path = write_prompts(tmp_path / "big.parquet", [f"p{i}" for i in range(100)])
    shards = list(plan_shards(_inputs(path), 10))
    first = pa.concat_tables(list(shards[0].segments[0].read({})))
    os.remove(path)  # only a cached row group can serve the next shard now
    second = pa.concat_tables(list(shards[1].segments[0].read({})))
    assert first.column("prompt").to_pylist() == [f"p{i}" for i in range(10)]
    assert second.column("prompt").to_pylist() == [f"p{i}" for i in range(10, 20)]


def test_key_format_is_img2dataset_style_and_widens_when_needed():
    k = key_format(3, 1000, 1)
    assert k.key(2, 17) == "000020017"
    assert key_format(200_000, 1000, 20).key(123456, 19999) == "12345619999"


def test_missing_column_lists_available_columns(tmp_path):
    path = write_prompts(tmp_path / "p.parquet", ["x"], caption=["c"])
    with pytest.raises(InputError, match="available columns: prompt, caption"):
        _inputs(path, prompt_column="text")


def test_prompt_column_of_wrong_type(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": [1, 2, 3]}), path)
    with pytest.raises(InputError, match="has type int64; prompts must be strings"):
        _inputs(path)


def test_glob_matching_nothing_and_missing_path(tmp_path):
    with pytest.raises(InputError, match="matched no Parquet files"):
        _inputs(f"{tmp_path}/*.parquet")
    with pytest.raises(InputError, match="no such file or folder"):
        _inputs(tmp_path / "nope.parquet")


def test_not_parquet_and_truncated_footer(tmp_path):
    (tmp_path / "a.parquet").write_text("prompt\nhello\n")
    with pytest.raises(InputError, match="is not a readable Parquet file"):
        _inputs(tmp_path / "a.parquet")
    good = write_prompts(tmp_path / "b.parquet", ["x", "y"])
    data = open(good, "rb").read()
    (tmp_path / "c.parquet").write_bytes(data[:-20])
    with pytest.raises(InputError, match="c.parquet is not a readable Parquet file"):
        _inputs(tmp_path / "c.parquet")


def test_files_with_different_schemas(tmp_path):
    write_prompts(tmp_path / "a.parquet", ["x"])
    write_prompts(tmp_path / "b.parquet", ["y"], extra=[1])
    with pytest.raises(InputError, match="different schema.*extra"):
        _inputs(tmp_path)


def test_plan_counts_without_reading_prompts(tmp_path):
    write_prompts(tmp_path / "p.parquet", [f"p{i}" for i in range(25)])
    spec = build_spec({"input": {"path": str(tmp_path)}, "model": {"family": "diffusers",
                       "path": "some/hub-id"}}, ["runtime.shard_size=10",
                                                 "generation.images_per_prompt=3"])
    plan = make_plan(spec)
    assert plan.summary()["shards"] == 3 and plan.images == 75
