"""``TrainConfig``: a training run's typed config file, with the job spec's machinery
(unknown keys refused, ``--set dotted.key=value``, errors naming the field)."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from models import config_files
from models.config_files import Section, one_of
from models.families import FAMILIES


class TrainConfigError(ValueError):
    """A training config that cannot run; the message names the field."""


class TrainData(Section):
    path: str = Field(description="the image-caption Parquet dataset to train on")
    image_column: str = "image"
    caption_column: str = "caption"
    storage_options: dict[str, Any] = Field(default_factory=dict)
    latent_column: str | None = Field(None, description="per-image noise z (a list of z_dim "
                                      "floats) that reproduces the image, for recon_weight")
    box_column: str | None = Field(None, description="per-image regions (4 floats each: x0, "
                                   "y0, x1, y1 as fractions of the image side), for "
                                   "region_weights")
    label_columns: list[str] = Field(default_factory=list, description="categorical columns "
                                     "(null = the caption leaves it open) for the "
                                     "aux_attribute_weight heads")


class TrainConfig(Section):
    """Every option of ``synthset train CONFIG``; the config files in ``configs/`` set some."""

    family: str = Field("gan", description="a family of models/families.py with a trainer")
    data: TrainData
    model: dict[str, Any] = Field(default_factory=dict, description="the family's config "
                                  "fields for a run from scratch (ignored with init_from, "
                                  "but for a larger autoregressive n_layers: the new "
                                  "blocks are appended as identities)")
    init_from: str | None = Field(None, description="an exported model folder to fine-tune")
    steps: int = Field(10000, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(2e-4, gt=0)
    lr_g: float | None = Field(None, gt=0)
    lr_d: float | None = Field(None, gt=0)
    betas: tuple[float, float] = (0.0, 0.99)
    ema_decay: float = Field(0.999, ge=0, le=1)
    mismatch_weight: float = Field(0.5, ge=0, le=1)
    hard_negatives: float = Field(0.5, ge=0, le=1, description="share of mismatched captions "
                                  "that differ in only 1-2 words")
    mode_seeking_weight: float = Field(0.0, ge=0, description="λ of the MSGAN mode-seeking "
                                       "term in G's loss (gan only; 0 = off)")
    aux_attribute_weight: float = Field(0.0, ge=0, description="weight of the AC-GAN "
                                        "attribute-classification terms in D's and G's "
                                        "losses (gan only, needs data.label_columns; 0 = off)")
    recon_weight: float = Field(0.0, ge=0, description="weight of G's L1 loss between "
                                "G(z, caption) and the real image, z from data.latent_column "
                                "(gan only; 0 = off)")
    region_weights: list[float] = Field(default_factory=list, description="one factor >= 1 "
                                        "per region of data.box_column: the recon L1 inside "
                                        "it counts that many times (overlaps: the largest; "
                                        "empty = plain mean)")
    image_size: int = Field(64, gt=0)
    out_dir: str = "runs/gan"
    export_dir: str | None = Field(None, description="default: OUT_DIR/export")
    sample_every: int = Field(500, ge=0)
    checkpoint_every: int = Field(500, ge=0)
    log_every: int = Field(50, gt=0)
    max_minutes: float | None = Field(None, gt=0, description="stop (checkpoint + export) "
                                      "after this much wall-clock time")
    resume: bool = Field(True, description="continue from OUT_DIR/checkpoint if it exists")
    seed: int = 0
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto")
    bf16: bool = Field(False, description="bf16 autocast, CUDA only")
    threads: int | None = Field(None, gt=0, description="torch CPU threads")
    # autoregressive only: the VQ-VAE stage, then a warm-up + cosine transformer schedule
    vq_steps: int = Field(3000, ge=0, description="tokenizer steps before the transformer's "
                          "`steps` (0: keep init_from's)")
    vq_lr: float = Field(2e-3, gt=0)
    vq_batch_size: int = Field(32, gt=0)
    warmup: int = Field(200, ge=0)
    object_token_weight: float = Field(1.0, ge=1, description="loss weight of image tokens "
                                       "whose patch differs from the image's corner colour "
                                       "(the object's; 1 = plain cross-entropy)")

    @model_validator(mode="after")
    def _labels_for_aux(self) -> TrainConfig:
        if self.aux_attribute_weight and not self.data.label_columns:
            raise ValueError("aux_attribute_weight > 0 needs data.label_columns: the "
                             "attribute columns of the training Parquet")
        if bool(self.recon_weight) != bool(self.data.latent_column):
            raise ValueError("recon_weight > 0 and data.latent_column go together: the L1 "
                             "loss needs the noise that reproduces each image")
        if bool(self.region_weights) != bool(self.data.box_column):
            raise ValueError("region_weights and data.box_column go together: one factor "
                             "per region the data gives each image")
        if self.region_weights and not self.recon_weight:
            raise ValueError("region_weights weight the recon L1: set recon_weight > 0")
        if any(f < 1 for f in self.region_weights):
            raise ValueError(f"region_weights must each be >= 1, got {self.region_weights}")
        return self

    @field_validator("family")
    @classmethod
    def _trainable(cls, v: str) -> str:
        trainable = [f.name for f in FAMILIES.values() if f.trainer]
        if v not in trainable:
            raise ValueError(f"Input should be {one_of(trainable)} (the families with a "
                             f"trainer); got {v!r}")
        return v


def build_train_config(raw: dict[str, Any], overrides: list[str] = ()) -> dict:
    """Validate ``raw`` plus ``key=value`` overrides; returns the full config as a dict."""
    raw = dict(raw or {})
    for assignment in overrides:
        config_files.apply_override(raw, assignment, TrainConfigError)
    try:
        return TrainConfig.model_validate(raw).model_dump(mode="json")
    except ValidationError as e:
        raise TrainConfigError(config_files.describe(e, TrainConfig, "training config",
                                                     "models/train/config.py")) from None


def load_train_config(path: str | None, overrides: list[str] | None = None) -> dict:
    """The YAML file at ``path`` (if any), then ``key=value`` overrides, validated."""
    raw: dict = {}
    if path:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise TrainConfigError(f"{path}: a training config is a YAML mapping")
    return build_train_config(raw, overrides or [])
