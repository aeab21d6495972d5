"""The noise that reproduces a cartoon character, and the GAN's L1 term trained on it."""

import json

import numpy as np
import pytest

from models import cartoon
from models.cartoon import ATTRIBUTES, VALUES
from models.cartoon_latent import DIMS, LATENT_DIMS, LAYOUTS, latent, read_latent
from models.encoders import save_tiny_encoder
from models.train import TrainConfigError, load_train_config, run_training


@pytest.mark.parametrize("layout", LAYOUTS)
def test_latent_round_trips_jitter_and_open_attributes_and_stays_normal(layout):
    rng = np.random.default_rng(0)
    zs = []
    for _ in range(600):
        attrs = cartoon.random_attrs(rng)
        named = {a: (attrs[a] if a in ("face", "skin") else None) for a in ATTRIBUTES}
        jitter = cartoon.draw_jitter(rng)
        z = latent(named, attrs, jitter, 64, rng, layout)
        got_jitter, values = read_latent(z, layout)
        assert np.allclose(got_jitter, jitter, atol=1e-4)
        assert all(values[a] == attrs[a] for a in ATTRIBUTES if named[a] is None)
        zs.append(z)
    zs = np.stack(zs)  # every dimension looks like N(0, 1): random z draws like the data
    assert np.abs(zs.mean(0)).max() < 0.2 and np.abs(zs.std(0) - 1).max() < 0.15
    # a random z picks each value of an open attribute about equally often
    drawn = [read_latent(z, layout)[1]["hair_colour"] for z in rng.standard_normal((1000, 64))]
    assert min(drawn.count(v) for v in VALUES["hair_colour"]) > 150
    # too short a z is refused alike when written and when read
    short = f"z has {DIMS[layout] - 1} dimensions; the {layout} layout needs >= {DIMS[layout]}"
    with pytest.raises(ValueError, match=short):
        latent(named, attrs, jitter, DIMS[layout] - 1, rng, layout)
    with pytest.raises(ValueError, match=short):
        read_latent(zs[0, :DIMS[layout] - 1], layout)


def test_argmax_layout_gives_each_value_a_dimension_a_linear_read_out_separates():
    # why the layout exists: in the slice a value's mean is not a linear step along one
    # axis (hair colour's five values on one number), in the argmax block it is
    rng = np.random.default_rng(2)
    attrs = [cartoon.random_attrs(rng) for _ in range(800)]
    open_all = dict.fromkeys(ATTRIBUTES)
    z = np.stack([latent(open_all, a, cartoon.NO_JITTER, 64, rng, "argmax") for a in attrs])
    value = np.array([VALUES["hair_colour"].index(a["hair_colour"]) for a in attrs])
    block = z[:, 21:26]  # hair colour's: after 12 slice dimensions and face, skin, hair style
    for k in range(5):  # its own dimension is the largest on average when value k is drawn
        assert block[value == k].mean(0).argmax() == k
        assert block[value == k, k].mean() > 0.9 > 0.2 > block[value != k, k].mean()
    jitter = cartoon.draw_jitter(rng)  # the jitter's dimensions are the slice layout's
    assert np.array_equal(latent(open_all, attrs[0], jitter, 64, rng, "argmax")[:4],
                          latent(open_all, attrs[0], jitter, 64, rng, "slice")[:4])
    with pytest.raises(ValueError, match="layout must be one of slice, argmax"):
        latent(open_all, attrs[0], cartoon.NO_JITTER, 64, rng, "onehot")
    with pytest.raises(ValueError, match="layout must be one of slice, argmax"):
        read_latent(z[0], "onehot")  # not read as argmax
    assert DIMS["argmax"] == 12 + sum(len(VALUES[a]) for a in ATTRIBUTES)


def test_explicit_jitter_draws_what_the_rng_would():
    attrs = cartoon.random_attrs(np.random.default_rng(1))
    by_rng = cartoon.render(attrs, 32, np.random.default_rng(5))
    jitter = cartoon.draw_jitter(np.random.default_rng(5))
    assert np.array_equal(cartoon.render(attrs, 32, jitter=jitter), by_rng)
    assert not np.array_equal(cartoon.render(attrs, 32), by_rng)


@pytest.fixture(scope="module")
def latent_data(tmp_path_factory):
    from models.cartoon_data import write_dataset

    path = str(tmp_path_factory.mktemp("latent") / "train.parquet")
    write_dataset(path, 64, size=16, seed=4, latent_dim=LATENT_DIMS)
    return path


def tiny_recon_run(data: str, tmp_path, name: str, *extra: str) -> list[dict]:
    """A tiny GAN trained with the recon L1 on ``data`` (with a ``z`` column) for 6 steps;
    ``extra`` overrides come last and win. Returns the logged losses, a dict per step."""
    encoder = str(tmp_path / "encoder")
    save_tiny_encoder(encoder)
    tiny = f"{{z_dim: {LATENT_DIMS}, ngf: 8, ndf: 4, cond_dim: 16, n_queries: 2, " \
           f"encoder: {encoder}}}"
    run_training(load_train_config(None, [
        f"data.path={data}", "data.latent_column=z", "recon_weight=20", "image_size=16",
        "batch_size=8", "steps=6", "threads=1", f"model={tiny}", f"out_dir={tmp_path / name}",
        "sample_every=0", "log_every=1", "checkpoint_every=0", *extra]))
    return [json.loads(line) for line in (tmp_path / name / "losses.jsonl").open()]


def test_recon_term_makes_g_redraw_the_image_its_z_encodes(latent_data, tmp_path):
    rows = tiny_recon_run(latent_data, tmp_path, "run", "batch_size=16", "steps=80",
                          "lr=2e-3", "log_every=10")
    # G starts far from the images (L1 ~0.6 in [-1, 1] units) and must close in on them
    assert rows[-1]["recon_l1"] < 0.6 * rows[0]["recon_l1"], rows


def test_recon_weight_and_latent_column_go_together(latent_data):
    with pytest.raises(TrainConfigError, match="latent_column"):
        load_train_config(None, [f"data.path={latent_data}", "recon_weight=1"])
    with pytest.raises(TrainConfigError, match="latent_column"):
        load_train_config(None, [f"data.path={latent_data}", "data.latent_column=z"])
