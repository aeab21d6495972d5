"""The GAN training run: data -> text bank -> trainer -> log, samples, checkpoints, export."""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import torch

from models.encoders import TextEncoder
from models.gan import GanConfig, load_config, load_weights, resolve_encoder
from models.train import checkpoint as ckpt
from models.train.data import load_captioned_images
from models.train.gan_loop import GanTrainer, TrainSettings, encode_captions

log = logging.getLogger("synthset.train")


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _settings(cfg: dict) -> TrainSettings:
    return TrainSettings(
        batch_size=int(cfg["batch_size"]), lr_g=float(cfg.get("lr_g") or cfg["lr"]),
        lr_d=float(cfg.get("lr_d") or cfg["lr"]), betas=tuple(cfg["betas"]),
        ema_decay=float(cfg["ema_decay"]), mismatch_weight=float(cfg["mismatch_weight"]),
        hard_negatives=float(cfg["hard_negatives"]),
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


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to checkpoint and export, instead of dying mid-step."""

    def __init__(self):
        self.stop = False
        self._old = {s: signal.signal(s, self._set) for s in (signal.SIGTERM, signal.SIGINT)}

    def _set(self, *_):
        self.stop = True

    def restore(self):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def load_training_data(cfg: dict, config, encoder_path: str | None, device):
    """The captioned images and their caption bank, encoded once; sets ``config.text_dim``."""
    data_cfg = cfg["data"]
    data = load_captioned_images(data_cfg["path"], config.image_size, data_cfg["image_column"],
                                 data_cfg["caption_column"], data_cfg.get("storage_options"))
    encoder = TextEncoder(encoder_path, device=str(device))
    config.text_dim = encoder.dim
    return data, encode_captions(encoder, data.captions)  # the bank is all training needs


def build_trainer(cfg: dict) -> GanTrainer:
    """Load data and encoder, precompute the caption bank, and build (or resume) a trainer."""
    config, encoder_path, weights = _model_config(cfg)
    device = _device(cfg["device"])
    data, bank = load_training_data(cfg, config, encoder_path, device)
    trainer = GanTrainer(config, _settings(cfg), data, bank, device, seed=int(cfg["seed"]))
    if weights:
        trainer.load_weights(weights["generator"], weights["discriminator"])
    found = ckpt.find_checkpoint(cfg["out_dir"]) if cfg.get("resume", True) else None
    if found:
        ckpt.load_checkpoint(trainer, found)
        log.info("resumed from %s at step %d", found, trainer.step_count)
    return trainer


def _log_row(path: str, step: int, losses: dict[str, float], seconds: float) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, "time_s": round(seconds, 1),
                            **{k: round(v, 5) for k, v in losses.items()}}) + "\n")


def _mean(rows: list[dict]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def prepare_run(cfg: dict) -> float | None:
    """Torch threads, the run folder with its config, and the wall-clock deadline (or None)."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    os.makedirs(cfg["out_dir"], exist_ok=True)
    with open(os.path.join(cfg["out_dir"], "train_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return time.time() + 60 * float(cfg["max_minutes"]) if cfg.get("max_minutes") else None


def train_gan(cfg: dict) -> str:
    """Run (or resume) one GAN training run; returns the export folder."""
    from tqdm import tqdm

    deadline = prepare_run(cfg)
    trainer = build_trainer(cfg)
    export_dir = cfg.get("export_dir") or os.path.join(cfg["out_dir"], "export")
    flag, start, window = _StopFlag(), time.time(), []
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
        _log_row(os.path.join(cfg["out_dir"], "losses.jsonl"), step, _mean(window),
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
