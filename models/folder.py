"""A model folder on disk, whatever the family: ``config.json`` beside ``model.safetensors``,
and a text encoder that may live inside it."""

from __future__ import annotations

import os

import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def resolve_encoder(model_dir: str, encoder: str | None) -> str | None:
    """A relative encoder path in a config is relative to the model folder."""
    if encoder and not os.path.isabs(encoder):
        candidate = os.path.join(model_dir, encoder)
        if os.path.isdir(candidate):
            return candidate
    return encoder


def load_weights(path: str, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` in ``model.safetensors``, with the prefix stripped."""
    from safetensors.torch import load_file

    state = load_file(os.path.join(path, WEIGHTS_NAME))
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
