"""The GAN training run: what the shared step loop (``loop.py``) needs from a GAN: build or
resume the trainer, checkpoint its three networks, sample a grid, export the EMA generator."""

from __future__ import annotations

import json
import logging
import os
import shutil

from models.folder import load_weights, resolve_encoder
from models.gan import GanConfig, load_config, save_model_folder
from models.train.aux_attributes import attribute_labels
from models.train.checkpoint import (
    begin_checkpoint,
    find_checkpoint,
    finish_checkpoint,
    load_run_state,
    save_sample_grid,
)
from models.train.common import load_training_data, prepare_run, train_device
from models.train.gan_loop import GanTrainer, TrainSettings
from models.train.loop import run_steps

log = logging.getLogger("synthset.train")


def _settings(cfg: dict) -> TrainSettings:
    return TrainSettings(
        batch_size=int(cfg["batch_size"]), lr_g=float(cfg.get("lr_g") or cfg["lr"]),
        lr_d=float(cfg.get("lr_d") or cfg["lr"]), betas=tuple(cfg["betas"]),
        ema_decay=float(cfg["ema_decay"]), mismatch_weight=float(cfg["mismatch_weight"]),
        hard_negatives=float(cfg["hard_negatives"]),
        mode_seeking_weight=float(cfg["mode_seeking_weight"]), bf16=bool(cfg["bf16"]),
        aux_attribute_weight=float(cfg["aux_attribute_weight"]),
        recon_weight=float(cfg["recon_weight"]),
        region_weights=tuple(float(f) for f in cfg["region_weights"]),
    )


def _labels(cfg: dict, captions: list[str]) -> tuple | None:
    """Attribute labels per caption for the AC-GAN heads, when the run uses them."""
    if not cfg["aux_attribute_weight"]:
        return None
    data_cfg = cfg["data"]
    return attribute_labels(data_cfg["path"], captions, data_cfg["label_columns"],
                            data_cfg["caption_column"], data_cfg.get("storage_options"))


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
    trainer = GanTrainer(config, _settings(cfg), data, bank, device, seed=int(cfg["seed"]),
                         labels=_labels(cfg, data.captions))
    if weights:
        trainer.load_weights(weights["generator"], weights["discriminator"])
    found = find_checkpoint(cfg["out_dir"]) if cfg.get("resume", True) else None
    if found:
        load_checkpoint(trainer, found)
        log.info("resumed from %s at step %d", found, trainer.step_count)
    return trainer


class GanRun:
    """One GAN run, as the shared step loop drives it."""

    def __init__(self, trainer: GanTrainer, total_steps: int):
        self.trainer, self.total_steps = trainer, total_steps

    def stage(self) -> str:
        return "gan"

    def before_step(self, deadline: float | None) -> None:
        pass

    def save_checkpoint(self, run_dir: str) -> str:
        return save_checkpoint(self.trainer, run_dir)

    def save_samples(self, folder: str) -> None:
        save_sample_grid(self.trainer, folder, seeds=8)

    def export(self, export_dir: str) -> str:
        return export_model(self.trainer, export_dir)


def train_gan(cfg: dict) -> str:
    """Run (or resume) one GAN training run; returns the export folder."""
    deadline = prepare_run(cfg)
    return run_steps(GanRun(build_trainer(cfg), int(cfg["steps"])), cfg, deadline, "train gan")


def _prefixed(prefix: str, state: dict) -> dict:
    return {f"{prefix}.{k}": v.detach().float().cpu().contiguous() for k, v in state.items()}


def save_checkpoint(trainer: GanTrainer, run_dir: str) -> str:
    """Write ``run_dir/checkpoint`` atomically: weights, optimizer and RNG state, step."""
    from safetensors.torch import save_file

    tmp = begin_checkpoint(run_dir)
    os.makedirs(tmp)
    weights = {**_prefixed("generator", trainer.generator.state_dict()),
               **_prefixed("discriminator", trainer.discriminator.state_dict()),
               **_prefixed("ema", trainer.ema.state_dict())}
    if trainer.aux:
        weights.update(_prefixed("aux", trainer.aux.heads.state_dict()))
    save_file(weights, os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(trainer.config.__dict__, f, indent=2)
    return finish_checkpoint(trainer, tmp, {"opt_g": trainer.opt_g, "opt_d": trainer.opt_d})


def checkpoint_config(path: str) -> GanConfig:
    """The GanConfig a checkpoint was trained with."""
    with open(os.path.join(path, "config.json")) as f:
        return GanConfig.from_dict(json.load(f))


def load_checkpoint(trainer: GanTrainer, path: str) -> int:
    """Restore everything ``save_checkpoint`` wrote; returns the step to continue from."""
    trainer.load_weights(load_weights(path, "generator."), load_weights(path, "discriminator."),
                         load_weights(path, "ema."))
    aux = load_weights(path, "aux.")
    if trainer.aux and aux:  # a run that just switched the heads on starts them afresh
        trainer.aux.heads.load_state_dict(aux)
    return load_run_state(trainer, path, {"opt_g": trainer.opt_g, "opt_d": trainer.opt_d})


def export_model(trainer: GanTrainer, export_dir: str) -> str:
    """A model folder (EMA generator + discriminator) that GanImageModel.from_pretrained loads."""
    save_model_folder(export_dir, trainer.config, trainer.ema, trainer.discriminator)
    return export_dir


def export_checkpoint(checkpoint_dir: str, export_dir: str) -> str:
    """Turn a (possibly still training) run's checkpoint into a loadable model folder."""
    from safetensors.torch import save_file

    from models.folder import CONFIG_NAME, WEIGHTS_NAME

    os.makedirs(export_dir, exist_ok=True)
    state = {**{f"generator.{k}": v for k, v in load_weights(checkpoint_dir, "ema.").items()},
             **{f"discriminator.{k}": v
                for k, v in load_weights(checkpoint_dir, "discriminator.").items()}}
    save_file(state, os.path.join(export_dir, WEIGHTS_NAME))
    shutil.copy(os.path.join(checkpoint_dir, "config.json"), os.path.join(export_dir, CONFIG_NAME))
    return export_dir
