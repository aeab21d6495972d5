"""Region-weighted recon L1: the mouth and face boxes of a render, the data column that
carries them, and the trainer's per-pixel weights (``region_weights``)."""


import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from models import cartoon
from models.cartoon_latent import LATENT_DIMS, read_latent
from models.train import TrainConfigError, load_train_config
from models.train.regions import region_weight_map, weighted_l1
from tests.models.test_cartoon_latent import tiny_recon_run


def _changed_pixels(attrs: dict, jitter: tuple, attribute: str) -> tuple[np.ndarray, ...]:
    """(ys, xs) of the pixels that differ between renders of every value of ``attribute``."""
    images = [cartoon.render({**attrs, attribute: v}, 64, jitter=jitter).astype(int)
              for v in cartoon.VALUES[attribute]]
    return np.nonzero(np.any([np.abs(i - images[0]).sum(-1) > 0 for i in images[1:]], 0))


@pytest.mark.parametrize(("part", "attribute"), [("mouth", "expression"), ("face", "skin")])
def test_part_boxes_hold_every_pixel_of_the_part_and_little_else(part, attribute):
    rng = np.random.default_rng(3)
    for i in range(120):
        attrs, jitter = cartoon.random_attrs(rng), list(cartoon.draw_jitter(rng))
        jitter[3] = (-8.0, 8.0, jitter[3])[i % 3]  # the extreme tilts too
        ys, xs = _changed_pixels(attrs, tuple(jitter), attribute)
        x0, y0, x1, y1 = np.array(cartoon.part_boxes(attrs, tuple(jitter))[part]) * 64
        # every changed pixel (a unit square) touches the box ...
        assert (xs + 1 >= x0).all() and (xs <= x1).all(), (i, attrs, jitter)
        assert (ys + 1 >= y0).all() and (ys <= y1).all(), (i, attrs, jitter)
        # ... and the box is not much bigger than the part
        assert (x1 - x0) * (y1 - y0) < 3 * (np.ptp(xs) + 1) * (np.ptp(ys) + 1)


def test_hair_box_holds_most_of_the_hair():
    rng = np.random.default_rng(5)
    inside = total = box_area = 0
    for _ in range(60):
        attrs, jitter = cartoon.random_attrs(rng), cartoon.draw_jitter(rng)
        attrs["accessory"] = "none"  # a hat covers the cap
        ys, xs = _changed_pixels(attrs, jitter, "hair_colour")
        x0, y0, x1, y1 = np.array(cartoon.part_boxes(attrs, jitter, ("hair",))["hair"]) * 64
        hit = (xs + 1 >= x0) & (xs <= x1) & (ys + 1 >= y0) & (ys <= y1)
        inside, total = inside + hit.sum(), total + len(xs)
        box_area += (x1 - x0) * (y1 - y0)
    # the cap is most of the hair: 0.58 (the rest: temples and long hair's side panels) ...
    assert inside / total > 0.5
    # ... and hair is a large share of the box (0.44: above short hair it holds background,
    # where spiky hair stands)
    assert inside / box_area > 0.35


def test_region_weight_map_puts_each_factor_in_its_box_and_the_largest_on_overlaps():
    boxes = torch.tensor([[0.25, 0.25, 0.5, 0.5, 0.0, 0.0, 0.75, 0.75]])  # inner, outer
    weights = region_weight_map(boxes, torch.tensor([10.0, 3.0]), 8)
    assert weights.shape == (1, 1, 8, 8)
    expected = torch.ones(8, 8)
    expected[:6, :6] = 3  # pixel centres 0.0625 .. 0.6875 lie in the outer box
    expected[2:4, 2:4] = 10  # centres 0.3125 and 0.4375 in the inner one
    assert torch.equal(weights[0, 0], expected)
    with pytest.raises(ValueError, match="2 boxes per image but region_weights has 1"):
        region_weight_map(boxes, torch.tensor([10.0]), 8)


def test_weighted_l1_counts_an_error_inside_a_box_factor_times():
    real = torch.zeros(2, 3, 8, 8)
    fake = real.clone()
    fake[:, :, 2:4, 2:4] = 1.0  # wrong only inside the box
    boxes = torch.tensor([[0.25, 0.25, 0.5, 0.5]]).repeat(2, 1)
    weights = region_weight_map(boxes, torch.tensor([20.0]), 8)
    assert torch.isclose(weighted_l1(fake, real, weights), 20 * weighted_l1(fake, real))
    fake = real.clone()
    fake[:, :, 6:, 6:] = 1.0  # wrong only outside it: the plain mean
    assert torch.isclose(weighted_l1(fake, real, weights), weighted_l1(fake, real))


@pytest.fixture(scope="module")
def box_data(tmp_path_factory):
    from models.cartoon_data import write_dataset

    folder = tmp_path_factory.mktemp("boxes")
    write_dataset(str(folder / "plain.parquet"), 48, size=16, seed=4, latent_dim=LATENT_DIMS)
    write_dataset(str(folder / "train.parquet"), 48, size=16, seed=4, latent_dim=LATENT_DIMS,
                  boxes=cartoon.DEFAULT_PARTS)
    return folder


def test_data_builder_writes_each_characters_boxes_and_nothing_else_changes(box_data):
    plain = pq.read_table(box_data / "plain.parquet")
    table = pq.read_table(box_data / "train.parquet")
    assert table.column_names == plain.column_names + ["boxes"]
    assert table.drop(["boxes"]).equals(plain)  # same images, captions and z as before
    for row in table.to_pylist():
        jitter, open_values = read_latent(np.array(row["z"]))
        attrs = {a: row[a] or open_values[a] for a in cartoon.ATTRIBUTES}
        expected = [v for box in cartoon.part_boxes(attrs, jitter, cartoon.DEFAULT_PARTS).values()
                    for v in box]
        assert np.allclose(row["boxes"], expected, atol=1e-3), row["caption"]


def test_region_weights_raise_the_recon_term_and_factors_of_one_change_nothing(box_data,
                                                                              tmp_path):
    data = str(box_data / "train.parquet")
    plain = tiny_recon_run(data, tmp_path, "plain")
    ones = tiny_recon_run(data, tmp_path, "ones", "data.box_column=boxes", "region_weights=[1, 1]")
    heavy = tiny_recon_run(data, tmp_path, "heavy", "data.box_column=boxes",
                      "region_weights=[20, 4]")
    assert [r["recon_l1"] for r in ones] == [r["recon_l1"] for r in plain]
    # same first batch and weights: only the mouth and face pixels count more
    assert heavy[0]["recon_l1"] > 1.5 * plain[0]["recon_l1"]


def test_region_weights_need_boxes_recon_and_factors_of_at_least_one(box_data):
    base = [f"data.path={box_data / 'train.parquet'}", "data.latent_column=z"]
    with pytest.raises(TrainConfigError, match="box_column"):
        load_train_config(None, [*base, "recon_weight=1", "region_weights=[2, 2]"])
    with pytest.raises(TrainConfigError, match="weight the recon L1"):
        load_train_config(None, [base[0], "data.box_column=boxes", "region_weights=[2, 2]"])
    with pytest.raises(TrainConfigError, match=">= 1"):
        load_train_config(None, [*base, "recon_weight=1", "data.box_column=boxes",
                                 "region_weights=[0.5, 2]"])
