"""Fidelity and variety on procedural scenes: wide jitter, identical pairs, spread ratio."""

import hashlib

import numpy as np
import pytest
import torch

from models import scenes, variety
from models.encoders import TextEncoder, save_tiny_encoder
from models.evaluate import evaluate, evaluate_renders, format_table
from models.gan import GanConfig, GanImageModel


def test_default_renders_are_byte_identical_to_before_wide_jitter():
    # digest of renders made by models/scenes.py before the jitter option existed
    rng, digest = np.random.default_rng(7), hashlib.sha256()
    for attrs in scenes.all_combinations()[::40]:
        digest.update(scenes.render(attrs, 64, rng).tobytes())
        digest.update(scenes.render(attrs, 32).tobytes())
    assert digest.hexdigest() == \
        "a29ce50a3bb0cd760e5ab582f0a5ce7f43bec6a343495f640cb07b8985e201a5"


def test_checker_reads_every_attribute_of_wide_renders():
    rng = np.random.default_rng(3)
    boxes = []
    combos = scenes.all_combinations()[::2]
    for attrs in combos:
        image = scenes.render(attrs, 64, rng, jitter="wide")
        assert scenes.analyse(image) == attrs
        boxes.append(scenes.locate(image))
    # and the jitter really is wider: centres spread over ~0.16 of the side, not ~0.08
    centres = np.array(boxes)[:, 0] - [scenes.POSITIONS[a["position"]][0] for a in combos]
    assert np.abs(centres).max() > 0.07
    with pytest.raises(ValueError, match="jitter"):
        scenes.render(scenes.all_combinations()[0], 64, rng, jitter="huge")


def test_pair_differences_and_identical_pairs():
    group = np.zeros((3, 8, 8, 3), np.uint8)
    group[2] += 8  # image 2 differs from 0 and 1 by 8 grey levels
    assert variety.pair_differences(group).tolist() == [0.0, 8.0, 8.0]
    result = variety.variety([group, group[:1].repeat(3, 0)], [group, group])
    assert result["identical_pair_rate"] == pytest.approx(4 / 6)
    assert result["alike_prompt_rate"] == 0.5
    assert result["spread_ratio"] is None  # no object in a plain image


@pytest.mark.parametrize("jitter", ["small", "wide"])
def test_true_renders_give_spread_ratio_about_one(jitter):
    result = evaluate_renders("heldout", prompts_per_combo=4, jitter=jitter)
    assert result["all_correct"] == 1.0 and result["n_images"] == 4 * len(scenes.split("heldout"))
    ratio = result["variety"]["spread_ratio"]
    assert all(0.85 < ratio[axis] < 1.15 for axis in variety.AXES), ratio
    assert result["variety"]["identical_pair_rate"] < 0.4
    assert "spread x / y / side" in format_table(result)


@pytest.fixture(scope="module")
def tiny_gan(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny-encoder"))
    save_tiny_encoder(path)
    return GanImageModel.from_config(GanConfig.tiny(), TextEncoder(path), seed=0)


def test_a_model_that_ignores_its_noise_scores_identical_pairs_one(tiny_gan):
    drawn = evaluate(tiny_gan, prompts_per_combo=2)["variety"]
    assert drawn["identical_pair_rate"] < 1.0  # the random tiny G does read z
    with torch.no_grad():
        tiny_gan.generator.fc.weight[:, :tiny_gan.config.z_dim] = 0  # now it cannot
    result = evaluate(tiny_gan, prompts_per_combo=2)
    assert result["variety"]["identical_pair_rate"] == 1.0
    assert result["variety"]["alike_prompt_rate"] == 1.0
    assert result["variety"]["k"] == 2 and result["n_images"] == 2 * len(scenes.split("heldout"))
    assert "variety" not in evaluate(tiny_gan, prompts_per_combo=1)


def test_cli_prints_variety_columns(capsys):
    from models.evaluate import main

    main(["--renders", "--per-combo", "2", "--jitter", "wide"])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| renders (wide jitter) | heldout | 358 | 1.000")
    assert len(row.split("|")) == 14
