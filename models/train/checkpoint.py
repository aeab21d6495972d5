"""What every run's checkpoints share: an atomic folder swap, the optimizer/sampler/RNG state
written last, finding the latest complete one; and sample grids."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "state.json"  # written last: a checkpoint folder without it is incomplete


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


def find_checkpoint(run_dir: str) -> str | None:
    """The latest complete checkpoint folder in ``run_dir``, if any."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".tmp"):
        path = os.path.join(run_dir, name)
        if os.path.exists(os.path.join(path, STATE_NAME)):
            return path
    return None


def save_sample_grid(trainer, folder: str, seeds: int) -> None:
    """Up to 8 captions spread over the data, ``seeds`` samples each, as one PNG per step;
    ``captions.txt`` names the rows."""
    captions = trainer.data.captions
    ids = torch.linspace(0, len(captions) - 1, min(8, len(captions))).long()
    images = trainer.sample(ids, seeds=list(range(seeds)))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "captions.txt"), "w") as f:  # one line per grid row
        f.write("\n".join(captions[i] for i in ids.tolist()) + "\n")
    save_grid(images, seeds, os.path.join(folder, f"step{trainer.step_count:07d}.png"))


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
