"""Training and fine-tuning of synthset's own model families (GAN and autoregressive).

``synthset train CONFIG.yaml`` calls :func:`load_train_config` then :func:`run_training`,
which runs the family's trainer (``models/families.py``) through the shared step loop
(``loop.py``). A run directory holds ``losses.jsonl``, ``samples/*.png``, a resumable
``checkpoint/`` and, at the end, an exported model folder.
"""

from __future__ import annotations

from models.families import FAMILIES, import_object
from models.train.config import TrainConfigError, build_train_config, load_train_config

__all__ = ["TrainConfigError", "load_train_config", "run_training"]


def run_training(config: dict) -> str:
    """Train (or fine-tune, or resume) as ``config`` says; returns the export folder."""
    config = build_train_config(config)
    train = import_object(FAMILIES[config["family"]].trainer, "trainer")
    return train(config)
