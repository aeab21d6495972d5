"""The AC-GAN attribute heads: labels from the training Parquet, the masked loss, a tiny run."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from models.cartoon import ATTRIBUTES
from models.cartoon_data import write_dataset
from models.encoders import save_tiny_encoder
from models.train import TrainConfigError, load_train_config, run_training
from models.train.aux_attributes import attribute_labels, attribute_loss
from models.train.data import load_captioned_images, read_table


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cartoon") / "train.parquet")
    write_dataset(path, 96, size=16, seed=3)
    return path


@pytest.fixture(scope="module")
def cfg(data, tmp_path_factory):
    encoder = str(tmp_path_factory.mktemp("encoder"))
    save_tiny_encoder(encoder)
    tiny = f"{{z_dim: 8, ngf: 4, ndf: 8, cond_dim: 16, n_queries: 2, encoder: {encoder}}}"
    return [f"data.path={data}", f"data.label_columns={json.dumps(ATTRIBUTES)}",
            "image_size=16", "batch_size=16", "threads=1", f"model={tiny}", "lr=2e-3",
            "aux_attribute_weight=1.0", "mode_seeking_weight=0.2", "sample_every=0",
            "log_every=10", "checkpoint_every=10"]


def test_labels_follow_the_captions_and_mask_what_they_leave_open(data):
    images = load_captioned_images(data, 16)
    labels, vocab = attribute_labels(data, images.captions, ATTRIBUTES)
    assert vocab["expression"] == ["neutral", "smiling", "surprised"]
    rows = read_table(data, ["caption", "kind", *ATTRIBUTES]).to_pylist()
    for row in rows:
        got = labels[images.captions.index(row["caption"])].tolist()
        want = [-1 if row[a] is None else vocab[a].index(row[a]) for a in ATTRIBUTES]
        assert got == want
    kinds = {r["kind"]: labels[images.captions.index(r["caption"])] for r in rows}
    assert (kinds["free"] == -1).all() and (kinds["full"] >= 0).all()
    assert ((kinds["partial"] >= 0).sum() >= 1) and (kinds["partial"] == -1).any()


def test_loss_leaves_open_attributes_out():
    logits = [torch.randn(4, 3, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    labels = torch.tensor([[0, -1], [2, -1], [-1, 1], [1, 0]])
    loss, accuracy = attribute_loss(logits, labels)
    want = F.cross_entropy(logits[0][[0, 1, 3]], labels[[0, 1, 3], 0]) + \
        F.cross_entropy(logits[1][[2, 3]], labels[[2, 3], 1])
    assert loss.item() == pytest.approx(want.item())
    assert len(accuracy) == 2 and 0 <= min(accuracy) <= max(accuracy) <= 1
    _, none = attribute_loss(logits, torch.full((4, 2), -1))
    assert all(a != a for a in none)  # nan: no row names the attribute


def test_heads_learn_real_attributes_checkpoint_and_resume(cfg, tmp_path):
    straight = run_training(load_train_config(None, cfg + [f"out_dir={tmp_path}/a",
                                                           "steps=60"]))
    with open(f"{tmp_path}/a/losses.jsonl") as f:
        rows = [json.loads(line) for line in f]
    first, last = rows[0], rows[-1]
    assert {"aux_real", "aux_fake", "real_acc_face", "fake_acc_expression"} <= set(last)
    # 8 heads start near chance: sum of log(K) ~ 9.6; the real-image loss must fall
    assert first["aux_real"] > 8.5 and last["aux_real"] < first["aux_real"] - 1.5, rows
    checkpoint = load_file(f"{tmp_path}/a/checkpoint/model.safetensors")
    assert any(k.startswith("aux.") for k in checkpoint)
    exported = load_file(f"{straight}/model.safetensors")
    assert not any(k.startswith("aux.") for k in exported)  # the heads only serve training
    run_training(load_train_config(None, cfg + [f"out_dir={tmp_path}/b", "steps=30"]))
    resumed = run_training(load_train_config(None, cfg + [f"out_dir={tmp_path}/b", "steps=60"]))
    again = load_file(f"{resumed}/model.safetensors")
    assert all(torch.equal(exported[k], again[k]) for k in exported)


def test_weight_without_label_columns_is_refused(data):
    with pytest.raises(TrainConfigError, match="label_columns"):
        load_train_config(None, [f"data.path={data}", "aux_attribute_weight=1.0"])
    plain = load_train_config(None, [f"data.path={data}"])
    assert plain["aux_attribute_weight"] == 0 and plain["data"]["label_columns"] == []
    assert os.path.basename(plain["data"]["path"]) == "train.parquet"
