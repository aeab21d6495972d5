"""Training configs are typed like job specs: every shipped config validates, unknown keys
and bad values are refused with the field named, and --set reaches nested keys."""

import glob
import os

import pytest

from models.train import TrainConfigError, load_train_config

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "models",
                                        "train", "configs", "*.yaml")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_shipped_training_config_validates(path):
    config = load_train_config(path)
    assert config["family"] in ("gan", "autoregressive") and config["data"]["path"]


def test_overrides_reach_nested_keys_and_keep_paths_as_strings():
    config = load_train_config(CONFIGS[0], ["steps=7", "model.ngf=8", "out_dir=0123",
                                            "betas=[0.5, 0.9]"])
    assert config["steps"] == 7 and config["model"]["ngf"] == 8
    assert config["out_dir"] == "0123" and config["betas"] == [0.5, 0.9]


def test_bad_configs_name_every_bad_field_and_what_was_received():
    with pytest.raises(TrainConfigError) as e:
        load_train_config(None, ["stepz=3", "family=diffusers", "lr=-1", "betas=[1]"])
    text = str(e.value)
    assert "stepz: unknown key" in text
    assert "family: Input should be 'gan' or 'autoregressive'" in text and "got 'diffusers'" in text
    assert "lr: Input should be greater than 0" in text
    assert "data: required" in text and "betas" in text
    with pytest.raises(TrainConfigError, match="expected dotted.key=value"):
        load_train_config(None, ["steps"])
