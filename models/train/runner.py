"""The GAN training run: data -> text bank -> trainer -> log, samples, checkpoints, export."""

from __future__ import annotations

import logging
import os
import time

import torch

from models.gan import GanConfig, load_config, load_weights, resolve_encoder
from models.train import checkpoint as ckpt
from models.train.common import (
    StopFlag,
    load_training_data,
    log_losses,
    mean_losses,
    prepare_run,
    train_device,
)
from models.train.gan_loop import GanTrainer, TrainSettings

log = logging.getLogger("synthset.train")


def _settings(cfg: dict) -> TrainSettings:
    return TrainSettings(
        batch_size=int(cfg["batch_size"]), lr_g=float(cfg.get("lr_g") or cfg["lr"]),
        lr_d=float(cfg.get("lr_d") or cfg["lr"]), betas=tuple(cfg["betas"]),
        ema_decay=float(cfg["ema_decay"]), mismatch_weight=float(cfg["mismatch_weight"]),
        hard_negatives=float(cfg["hard_negatives"]),
        mode_seeking=float(cfg.get("mode_seeking") or 0),
        bf16=bool(cfg["bf16"]),
    )


def _model_config(cfg: dict) -> tuple[GanConfig, str | None, dict | None]:
    """GanConfig, encoder path and initial weights: from ``init_from`` or from ``model``."""
    init = cfg.get("init_from")
    if init:
        # ``model`` entries may extend the loaded architecture (e.g. token_code)
        config = GanConfig.from_dict({**load_config(init).__dict__, **cfg.get("model", {})})
        weights = {"generator": load_weights(init, "generator."),
                   "discriminator": load_weights(init, "discriminator.")}
        # the export will live elsewhere: record where the encoder really is
        config.encoder = resolve_encoder(init, config.encoder)
        return config, config.encoder, weights
    config = GanConfig.from_dict({**cfg.get("model", {}), "image_size": cfg["image_size"]})
    return config, config.encoder, None


def build_trainer(cfg: dict) -> GanTrainer:
    """Load data and encoder, precompute the caption bank, and build (or resume) a trainer."""
    config, encoder_path, weights = _model_config(cfg)
    device = train_device(cfg["device"])
    data, bank = load_training_data(cfg, config, encoder_path, device)
    trainer = GanTrainer(config, _settings(cfg), data, bank, device, seed=int(cfg["seed"]))
    if weights:
        trainer.load_weights(weights["generator"], weights["discriminator"])
    found = ckpt.find_checkpoint(cfg["out_dir"]) if cfg.get("resume", True) else None
    if found:
        ckpt.load_checkpoint(trainer, found)
        log.info("resumed from %s at step %d", found, trainer.step_count)
    return trainer


def train_gan(cfg: dict) -> str:
    """Run (or resume) one GAN training run; returns the export folder."""
    from tqdm import tqdm

    deadline = prepare_run(cfg)
    trainer = build_trainer(cfg)
    export_dir = cfg.get("export_dir") or os.path.join(cfg["out_dir"], "export")
    flag, start, window = StopFlag(), time.time(), []
    bar = tqdm(total=int(cfg["steps"]), initial=trainer.step_count, mininterval=5,
               desc="train gan")
    try:
        while trainer.step_count < int(cfg["steps"]) and not flag.stop:
            window.append(trainer.step())
            bar.update(1)
            _after_step(trainer, cfg, window, start)
            if deadline and time.time() > deadline:
                log.info("max_minutes reached at step %d", trainer.step_count)
                break
    finally:
        bar.close()
        flag.restore()
    ckpt.save_checkpoint(trainer, cfg["out_dir"])
    _save_samples(trainer, cfg)
    return ckpt.export_model(trainer, export_dir)


def _after_step(trainer: GanTrainer, cfg: dict, window: list[dict], start: float) -> None:
    step = trainer.step_count
    # step 1 is logged alone: the untrained baseline that later windows are compared to
    if step % int(cfg["log_every"]) == 0 or step == 1:
        log_losses(os.path.join(cfg["out_dir"], "losses.jsonl"), step, mean_losses(window),
                 time.time() - start)
        window.clear()
    if cfg.get("sample_every") and step % int(cfg["sample_every"]) == 0:
        _save_samples(trainer, cfg)
    if cfg.get("checkpoint_every") and step % int(cfg["checkpoint_every"]) == 0:
        ckpt.save_checkpoint(trainer, cfg["out_dir"])


def _save_samples(trainer: GanTrainer, cfg: dict) -> None:
    n_caps = min(8, len(trainer.data.captions))
    ids = torch.linspace(0, len(trainer.data.captions) - 1, n_caps).long()
    images = trainer.sample(ids, seeds=list(range(8)))
    folder = os.path.join(cfg["out_dir"], "samples")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "captions.txt"), "w") as f:  # one line per grid row
        f.write("\n".join(trainer.data.captions[i] for i in ids.tolist()) + "\n")
    ckpt.save_grid(images, 8, os.path.join(folder, f"step{trainer.step_count:07d}.png"))
