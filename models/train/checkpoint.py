"""Resumable checkpoints (safetensors + optimizer state), sample grids and model export."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import torch

from models.gan import GanConfig, load_weights, save_model_folder
from models.train.gan_loop import GanTrainer

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "state.json"  # written last: a checkpoint folder without it is incomplete


def _prefixed(prefix: str, state: dict) -> dict:
    return {f"{prefix}.{k}": v.detach().float().cpu().contiguous() for k, v in state.items()}


def begin_checkpoint(run_dir: str) -> str:
    """An empty scratch folder for the next checkpoint of ``run_dir`` (not created)."""
    tmp = os.path.join(run_dir, CHECKPOINT_DIR) + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def finish_checkpoint(trainer, tmp: str, optimizers: dict) -> str:
    """Write the run state into ``tmp`` (``optimizers``, the sampler, the torch RNG, then
    ``state.json`` last) and swap it in for ``run_dir/checkpoint``; returns that folder."""
    torch.save({**{name: opt.state_dict() for name, opt in optimizers.items()},
                "sampler": trainer.sampler.get_state(), "torch_rng": torch.get_rng_state()},
               os.path.join(tmp, "optimizer.pt"))
    with open(os.path.join(tmp, STATE_NAME), "w") as f:
        json.dump({"step": trainer.step_count}, f)
    final = tmp.removesuffix(".tmp")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def load_run_state(trainer, path: str, optimizers: dict) -> int:
    """Restore what ``finish_checkpoint`` wrote; returns the step to continue from."""
    state = torch.load(os.path.join(path, "optimizer.pt"), weights_only=True)
    for name, opt in optimizers.items():
        opt.load_state_dict(state[name])
    trainer.sampler.set_state(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    with open(os.path.join(path, STATE_NAME)) as f:
        trainer.step_count = json.load(f)["step"]
    return trainer.step_count


def save_checkpoint(trainer: GanTrainer, run_dir: str) -> str:
    """Write ``run_dir/checkpoint`` atomically: weights, optimizer and RNG state, step."""
    from safetensors.torch import save_file

    tmp = begin_checkpoint(run_dir)
    os.makedirs(tmp)
    weights = {**_prefixed("generator", trainer.generator.state_dict()),
               **_prefixed("discriminator", trainer.discriminator.state_dict()),
               **_prefixed("ema", trainer.ema.state_dict())}
    save_file(weights, os.path.join(tmp, "model.safetensors"))
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(trainer.config.__dict__, f, indent=2)
    return finish_checkpoint(trainer, tmp, {"opt_g": trainer.opt_g, "opt_d": trainer.opt_d})


def find_checkpoint(run_dir: str) -> str | None:
    """The latest complete checkpoint folder in ``run_dir``, if any."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".tmp"):
        path = os.path.join(run_dir, name)
        if os.path.exists(os.path.join(path, STATE_NAME)):
            return path
    return None


def checkpoint_config(path: str) -> GanConfig:
    """The GanConfig a checkpoint was trained with."""
    with open(os.path.join(path, "config.json")) as f:
        return GanConfig.from_dict(json.load(f))


def load_checkpoint(trainer: GanTrainer, path: str) -> int:
    """Restore everything ``save_checkpoint`` wrote; returns the step to continue from."""
    trainer.load_weights(load_weights(path, "generator."), load_weights(path, "discriminator."),
                         load_weights(path, "ema."))
    return load_run_state(trainer, path, {"opt_g": trainer.opt_g, "opt_d": trainer.opt_d})


def export_model(trainer: GanTrainer, export_dir: str) -> str:
    """A model folder (EMA generator + discriminator) that GanImageModel.from_pretrained loads."""
    save_model_folder(export_dir, trainer.config, trainer.ema, trainer.discriminator)
    return export_dir


def save_grid(images: torch.Tensor, columns: int, path: str) -> None:
    """(N, 3, S, S) images in [-1, 1] -> one PNG, ``columns`` per row."""
    from PIL import Image

    from models.base import to_uint8

    pixels = to_uint8(images)  # (N, S, S, 3)
    n, s = pixels.shape[:2]
    rows = -(-n // columns)
    grid = np.zeros((rows * s, columns * s, 3), np.uint8)
    for i, image in enumerate(pixels):
        r, c = divmod(i, columns)
        grid[r * s:(r + 1) * s, c * s:(c + 1) * s] = image
    Image.fromarray(grid).save(path)


def export_checkpoint(checkpoint_dir: str, export_dir: str) -> str:
    """Turn a (possibly still training) run's checkpoint into a loadable model folder."""
    from safetensors.torch import save_file

    from models.gan import CONFIG_NAME, WEIGHTS_NAME

    os.makedirs(export_dir, exist_ok=True)
    state = {**{f"generator.{k}": v for k, v in load_weights(checkpoint_dir, "ema.").items()},
             **{f"discriminator.{k}": v
                for k, v in load_weights(checkpoint_dir, "discriminator.").items()}}
    save_file(state, os.path.join(export_dir, WEIGHTS_NAME))
    shutil.copy(os.path.join(checkpoint_dir, "config.json"), os.path.join(export_dir, CONFIG_NAME))
    return export_dir
