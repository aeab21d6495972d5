"""The autoregressive training run: data -> text bank -> trainer -> log, samples, export.

Checkpoints (``OUT_DIR/checkpoint``) hold both networks, both optimizers and the
sampler state, so a run resumes mid-stage.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from models.autoregressive import ARConfig, load_config, save_model_folder
from models.gan import load_weights, resolve_encoder
from models.train.ar_loop import ARSettings, ARTrainer
from models.train.checkpoint import (
    begin_checkpoint,
    find_checkpoint,
    finish_checkpoint,
    load_run_state,
    save_grid,
)
from models.train.common import (
    StopFlag,
    load_training_data,
    log_losses,
    mean_losses,
    prepare_run,
    train_device,
)

log = logging.getLogger("synthset.train")


def _settings(cfg: dict) -> ARSettings:
    return ARSettings(
        batch_size=int(cfg["batch_size"]), lr=float(cfg["lr"]), betas=tuple(cfg["betas"]),
        warmup=int(cfg["warmup"]), steps=int(cfg["steps"]), vq_steps=int(cfg["vq_steps"]),
        vq_lr=float(cfg["vq_lr"]), vq_batch_size=int(cfg["vq_batch_size"]),
    )


def _model_config(cfg: dict) -> tuple[ARConfig, dict | None]:
    """ARConfig and initial weights: from ``init_from`` (fine-tuning) or from ``model``."""
    init = cfg.get("init_from")
    if init:
        config = load_config(init)
        # the export will live elsewhere: record where the encoder really is
        config.encoder = resolve_encoder(init, config.encoder)
        return config, {"transformer": load_weights(init, "transformer."),
                        "vq": load_weights(init, "vq.")}
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


def train_autoregressive(cfg: dict) -> str:
    """Run (or resume) one VQ + transformer training run; returns the export folder."""
    from tqdm import tqdm

    deadline = prepare_run(cfg)
    trainer = build_trainer(cfg)
    flag, start, window, ar_start = StopFlag(), time.time(), [], None
    bar = tqdm(total=trainer.total_steps, initial=trainer.step_count, mininterval=5,
               desc="train autoregressive")
    try:
        while trainer.step_count < trainer.total_steps and not flag.stop:
            stage = trainer.in_vq_stage
            if deadline and not stage:
                ar_start = ar_start or time.time()
                trainer.time_progress = (time.time() - ar_start) / max(1.0, deadline - ar_start)
            window.append(trainer.step())
            bar.update(1)
            _after_step(trainer, cfg, window, start, stage_ended=stage != trainer.in_vq_stage)
            if deadline and time.time() > deadline:
                log.info("max_minutes reached at step %d", trainer.step_count)
                break
    finally:
        bar.close()
        flag.restore()
    save_checkpoint(trainer, cfg["out_dir"])
    _save_samples(trainer, cfg)
    export_dir = cfg.get("export_dir") or os.path.join(cfg["out_dir"], "export")
    save_model_folder(export_dir, trainer.config, trainer.transformer, trainer.vq)
    return export_dir


def _after_step(trainer: ARTrainer, cfg: dict, window: list[dict], start: float,
                stage_ended: bool) -> None:
    step = trainer.step_count
    # step 1 is logged alone: the untrained baseline that later windows are compared to
    if window and (step % int(cfg["log_every"]) == 0 or step == 1 or stage_ended):
        log_losses(os.path.join(cfg["out_dir"], "losses.jsonl"), step, mean_losses(window),
                 time.time() - start)
        window.clear()
    if stage_ended or (cfg.get("sample_every") and step % int(cfg["sample_every"]) == 0):
        _save_samples(trainer, cfg)
    if stage_ended or (cfg.get("checkpoint_every") and step % int(cfg["checkpoint_every"]) == 0):
        save_checkpoint(trainer, cfg["out_dir"])


def _save_samples(trainer: ARTrainer, cfg: dict) -> None:
    n_caps = min(8, len(trainer.data.captions))
    ids = torch.linspace(0, len(trainer.data.captions) - 1, n_caps).long()
    images = trainer.sample(ids, seeds=list(range(4)))
    folder = os.path.join(cfg["out_dir"], "samples")
    os.makedirs(folder, exist_ok=True)
    save_grid(images, 4, os.path.join(folder, f"step{trainer.step_count:07d}.png"))
