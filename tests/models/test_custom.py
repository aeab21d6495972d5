"""model.family: custom: a generator defined outside synthset runs as a Ray job; and a
``synthset.models`` entry point becomes a family name."""

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from models.families import family_names, get_family
from models.registry import check_model_spec, load_model
from pipeline.runner import run_job
from pipeline.spec import SpecError, build_spec
from tests.conftest import write_prompts

FACTORY = "tests.models.toy_generator:make_model"  # importable on Ray's workers (cwd)


def _spec(tmp_path, **model):
    src = write_prompts(tmp_path / "p.parquet", ["a red thing", "a blue thing", "a cat"])
    return build_spec({"input": {"path": src}, "output": {"path": str(tmp_path / "out")},
                       "model": {"family": "custom", "factory": FACTORY,
                                 "options": {"stripes": 3}, **model},
                       "generation": {"images_per_prompt": 2},
                       "runtime": {"actors": 1, "shard_size": 2}})


def test_a_custom_generator_runs_through_a_ray_job(ray_local, tmp_path):
    manifest = run_job(_spec(tmp_path), show_progress=False)
    assert manifest["successes"] == 6 and manifest["failed"] == 0
    rows = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    assert {r["model"] for r in rows} == {"toy-3"} and {r["model_family"] for r in rows} == {
        "custom"}
    row = rows[0]
    pixels = np.asarray(Image.open(tmp_path / "out" / row["file"]))
    colour = tuple(hashlib.sha256(b"a red thing").digest()[:3])
    assert pixels.shape == (32, 32, 3)
    assert tuple(pixels[(row["seed"] % 3) + 1, 0]) == colour  # the prompt's colour...
    assert tuple(pixels[row["seed"] % 3, 0]) == tuple(255 - c for c in colour)  # ...seeded


def test_custom_without_a_factory_is_refused_before_any_actor(tmp_path):
    with pytest.raises(ValueError, match="model.factory is required"):
        check_model_spec("custom", None, None, None, None)
    with pytest.raises(ValueError, match="cannot be imported.*no_such_module"):
        check_model_spec("custom", None, None, None, "no_such_module:make")
    with pytest.raises(SpecError, match="got 'nope'"):
        build_spec({"input": {"path": "x"}, "model": {"family": "nope"}})


def test_an_entry_point_plugin_is_a_family(tmp_path, monkeypatch):
    dist = tmp_path / "toy_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[synthset.models]\ntoy = tests.models.toy_generator:make_model\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "toy" in family_names() and get_family("toy").loader == "models.registry:load_custom"
    model = load_model("toy", None, options={"stripes": 5})
    assert model.model_id == "toy-5"
    assert build_spec({"input": {"path": "x"}, "model": {"family": "toy"}}).model.family == "toy"
