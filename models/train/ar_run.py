"""The autoregressive training run: what the shared step loop (``loop.py``) needs from it.

Checkpoints (``OUT_DIR/checkpoint``) hold both networks, both optimizers and the
sampler state, so a run resumes mid-stage.
"""

from __future__ import annotations

import logging
import time

from models.autoregressive import ARConfig, grow_blocks, load_config, save_model_folder
from models.folder import load_weights, resolve_encoder
from models.train.ar_loop import ARSettings, ARTrainer
from models.train.checkpoint import (
    begin_checkpoint,
    find_checkpoint,
    finish_checkpoint,
    load_run_state,
    save_sample_grid,
)
from models.train.common import load_training_data, prepare_run, train_device
from models.train.loop import run_steps

log = logging.getLogger("synthset.train")


def _settings(cfg: dict) -> ARSettings:
    return ARSettings(
        batch_size=int(cfg["batch_size"]), lr=float(cfg["lr"]), betas=tuple(cfg["betas"]),
        warmup=int(cfg["warmup"]), steps=int(cfg["steps"]), vq_steps=int(cfg["vq_steps"]),
        vq_lr=float(cfg["vq_lr"]), vq_batch_size=int(cfg["vq_batch_size"]),
        object_weight=float(cfg.get("object_token_weight", 1.0)),
    )


def _model_config(cfg: dict) -> tuple[ARConfig, dict | None]:
    """ARConfig and initial weights: from ``init_from`` (fine-tuning) or from ``model``."""
    init = cfg.get("init_from")
    if init:
        config = load_config(init)
        # the export will live elsewhere: record where the encoder really is
        config.encoder = resolve_encoder(init, config.encoder)
        weights = {"transformer": load_weights(init, "transformer."),
                   "vq": load_weights(init, "vq.")}
        layers = int(cfg.get("model", {}).get("n_layers", config.n_layers))
        if layers != config.n_layers:  # deepen: the new blocks start as identities
            config.n_layers = layers
            weights["transformer"] = grow_blocks(weights["transformer"], config)
        return config, weights
    model = dict(cfg.get("model", {}))
    vq = {**ARConfig().vq, **model.pop("vq", {}), "image_size": cfg["image_size"]}
    return ARConfig.from_dict({**model, "vq": vq, "image_size": cfg["image_size"]}), None


def build_trainer(cfg: dict) -> ARTrainer:
    """Load data and encoder, precompute the caption bank, and build (or resume) a trainer."""
    config, weights = _model_config(cfg)
    device = train_device(cfg["device"])
    data, bank = load_training_data(cfg, config, config.encoder, device)
    trainer = ARTrainer(config, _settings(cfg), data, bank, device, seed=int(cfg["seed"]))
    if weights:
        trainer.load_weights(weights["transformer"], weights["vq"])
    found = find_checkpoint(cfg["out_dir"]) if cfg.get("resume", True) else None
    if found:
        load_checkpoint(trainer, found)
        log.info("resumed from %s at step %d", found, trainer.step_count)
    return trainer


def save_checkpoint(trainer: ARTrainer, run_dir: str) -> str:
    """Write ``run_dir/checkpoint`` atomically: weights, optimizer and RNG state, step."""
    tmp = begin_checkpoint(run_dir)
    save_model_folder(tmp, trainer.config, trainer.transformer, trainer.vq)
    return finish_checkpoint(trainer, tmp, {"opt_vq": trainer.opt_vq, "opt_ar": trainer.opt_ar})


def load_checkpoint(trainer: ARTrainer, path: str) -> int:
    """Restore everything ``save_checkpoint`` wrote; returns the step to continue from."""
    trainer.load_weights(load_weights(path, "transformer."), load_weights(path, "vq."))
    return load_run_state(trainer, path, {"opt_vq": trainer.opt_vq, "opt_ar": trainer.opt_ar})


class ARRun:
    """One autoregressive run, as the shared step loop drives it: a VQ stage, then the
    transformer's, whose cosine schedule follows the wall clock when max_minutes is set."""

    def __init__(self, trainer: ARTrainer):
        self.trainer, self.total_steps = trainer, trainer.total_steps
        self._ar_start: float | None = None

    def stage(self) -> str:
        return "vq" if self.trainer.in_vq_stage else "ar"

    def before_step(self, deadline: float | None) -> None:
        if deadline and not self.trainer.in_vq_stage:
            self._ar_start = self._ar_start or time.time()
            self.trainer.time_progress = ((time.time() - self._ar_start)
                                          / max(1.0, deadline - self._ar_start))

    def save_checkpoint(self, run_dir: str) -> str:
        return save_checkpoint(self.trainer, run_dir)

    def save_samples(self, folder: str) -> None:
        save_sample_grid(self.trainer, folder, seeds=4)

    def export(self, export_dir: str) -> str:
        t = self.trainer
        save_model_folder(export_dir, t.config, t.transformer, t.vq)
        return export_dir


def train_autoregressive(cfg: dict) -> str:
    """Run (or resume) one VQ + transformer training run; returns the export folder."""
    deadline = prepare_run(cfg)
    return run_steps(ARRun(build_trainer(cfg)), cfg, deadline, "train autoregressive")
