"""The procedural scenes, their splits, their Parquet writer and the analytic checker."""

import numpy as np
import pytest

from models import scenes
from models.evaluate import evaluate_renders


def test_caption_format():
    attrs = dict(size="small", colour="red", shape="circle", position="on the left",
                 background="blue")
    assert scenes.caption(attrs) == "a small red circle on the left on a blue background"


def test_splits_are_disjoint_deterministic_and_about_ten_percent():
    train, heldout = scenes.split("train"), scenes.split("heldout")
    assert len(train) + len(heldout) == len(scenes.all_combinations()) == 1680
    assert 0.07 < len(heldout) / 1680 < 0.13
    assert not {scenes.caption(a) for a in train} & {scenes.caption(a) for a in heldout}
    assert heldout == scenes.split("heldout")
    assert all(a["colour"] != a["background"] for a in train)


@pytest.mark.parametrize("jitter", [None, 0])
def test_checker_reads_every_rendered_combination(jitter):
    rng = None if jitter is None else np.random.default_rng(jitter)
    for attrs in scenes.all_combinations()[::3]:
        image = scenes.render(attrs, 64, rng)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert scenes.analyse(image) == attrs


def test_checker_scores_renders_perfectly_and_noise_badly():
    assert evaluate_renders("heldout")["all_correct"] == 1.0
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert set(scenes.analyse(noise)) == set(scenes.ATTRIBUTES)  # noise must not crash it
    plain = np.full((64, 64, 3), 20, np.uint8)
    assert scenes.analyse(plain) == dict(background="black", colour=None, position=None,
                                         shape=None, size=None)


def test_write_dataset_to_an_fsspec_url_and_read_it_back():
    from models.train.data import load_captioned_images

    scenes.write_dataset("memory://scenes/part-0.parquet", 12, size=32, seed=3)
    data = load_captioned_images("memory://scenes", 32)
    assert data.images.shape == (12, 3, 32, 32)
    assert -1 <= data.images.min() and data.images.max() <= 1
    assert all(c.startswith("a ") and c.endswith(" background") for c in data.captions)
