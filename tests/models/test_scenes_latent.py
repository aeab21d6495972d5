"""The noise that reproduces a wide-jitter scene, and the data column that carries it."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from models import scenes
from models.scenes_latent import LATENT_DIMS, latent, read_latent
from models.train.data import load_captioned_images


def test_latent_round_trips_the_free_values_and_stays_normal():
    rng = np.random.default_rng(0)
    zs = []
    for _ in range(600):
        free = scenes.draw_free(rng)
        z = latent(free, 64, rng)
        assert z.shape == (64,) and z.dtype == np.float32
        assert np.allclose(read_latent(z), free, atol=1e-5)
        zs.append(z)
    zs = np.stack(zs)  # every dimension looks like N(0, 1): random z draws like the data
    assert np.abs(zs.mean(0)).max() < 0.2 and np.abs(zs.std(0) - 1).max() < 0.15
    with pytest.raises(ValueError, match="z_dim"):
        latent(free, LATENT_DIMS - 1, rng)


def test_free_values_draw_what_the_rng_would_and_move_the_object():
    attrs = scenes.split("train")[5]
    by_rng = scenes.render(attrs, 64, np.random.default_rng(5), jitter="wide")
    free = scenes.draw_free(np.random.default_rng(5))
    assert np.array_equal(scenes.render(attrs, 64, free=free), by_rng)
    # each free value moves what the caption leaves open and nothing it names
    x0, y0, side0 = scenes.locate(scenes.render(attrs, 64, free=(0.5, 0.0, 0.5)))
    x1, y1, side1 = scenes.locate(scenes.render(attrs, 64, free=(0.5, 1.0, 0.5)))
    assert x1 - x0 > 0.1 and abs(y1 - y0) < 0.02 and abs(side1 - side0) < 0.02
    small, large = (scenes.locate(scenes.render(attrs, 64, free=(u, 0.5, 0.5)))[2]
                    for u in (0.0, 0.99))
    assert large - small > 0.05
    for u in [(0.0, 0.0, 0.0), (0.99, 0.99, 0.99)]:  # the corners still read as captioned
        assert scenes.analyse(scenes.render(attrs, 64, free=u)) == attrs


def test_write_dataset_stores_the_z_that_redraws_each_image(tmp_path):
    path = str(tmp_path / "scenes.parquet")
    scenes.write_dataset(path, 24, size=32, seed=3, jitter="wide", latent_dim=16)
    rows = pq.read_table(path).to_pylist()
    assert len(rows) == 24 and all(len(r["z"]) == 16 for r in rows)
    for r in rows:
        image = np.asarray(Image.open(io.BytesIO(r["image"])))
        attrs = {a: r[a] for a in scenes.ATTRIBUTES}
        redrawn = scenes.render(attrs, 32, free=read_latent(np.array(r["z"])))
        assert np.array_equal(image, redrawn)
    data = load_captioned_images(path, 32, latent_column="z")
    assert data.latents.shape == (24, 16)
    with pytest.raises(ValueError, match="wide"):
        scenes.write_dataset(str(tmp_path / "x.parquet"), 4, latent_dim=16)


def test_write_dataset_where_keeps_only_matching_combinations(tmp_path):
    path = str(tmp_path / "red-on-blue.parquet")
    scenes.main([path, "--n", "8", "--size", "16", "--jitter", "wide", "--latent-dim", "8",
                 "--where", "colour=red", "--where", "background=blue"])
    rows = pq.read_table(path).to_pylist()
    assert len(rows) == 8 and {(r["colour"], r["background"]) for r in rows} == {("red", "blue")}
    assert all(r["caption"].endswith("red " + r["shape"] + " " + r["position"]
                                     + " on a blue background") for r in rows)
    with pytest.raises(ValueError, match="no train combination"):
        scenes.write_dataset(path, 4, where={"colour": "red", "background": "red"})
