"""What the GAN and autoregressive training runs share: device, run folder, data, stop
signal and the loss log."""

from __future__ import annotations

import json
import os
import signal
import time

import torch

from models.encoders import TextEncoder
from models.train.data import load_captioned_images
from models.train.text_bank import encode_captions


def train_device(name: str) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def prepare_run(cfg: dict) -> float | None:
    """Torch threads, the run folder with its config, and the wall-clock deadline (or None)."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    os.makedirs(cfg["out_dir"], exist_ok=True)
    with open(os.path.join(cfg["out_dir"], "train_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return time.time() + 60 * float(cfg["max_minutes"]) if cfg.get("max_minutes") else None


def load_training_data(cfg: dict, config, encoder_path: str | None, device):
    """The captioned images and their caption bank, encoded once; sets ``config.text_dim``."""
    data_cfg = cfg["data"]
    data = load_captioned_images(data_cfg["path"], config.image_size, data_cfg["image_column"],
                                 data_cfg["caption_column"], data_cfg.get("storage_options"),
                                 data_cfg.get("latent_column"), data_cfg.get("box_column"))
    encoder = TextEncoder(encoder_path, device=str(device))
    config.text_dim = encoder.dim
    return data, encode_captions(encoder, data.captions)  # the bank is all training needs


class StopFlag:
    """SIGTERM/SIGINT ask the loop to checkpoint and export, instead of dying mid-step."""

    def __init__(self):
        self.stop = False
        self._old = {s: signal.signal(s, self._set) for s in (signal.SIGTERM, signal.SIGINT)}

    def _set(self, *_):
        self.stop = True

    def restore(self):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def log_losses(path: str, step: int, losses: dict[str, float], seconds: float) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, "time_s": round(seconds, 1),
                            **{k: round(v, 5) for k, v in losses.items()}}) + "\n")


def mean_losses(rows: list[dict]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
