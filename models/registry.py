"""``model.family`` → loader, plus the device and dtype an actor should use."""

from __future__ import annotations

import os
from typing import Any

from models.base import ImageModel

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
SHIPPED = {
    "gan": os.path.join(WEIGHTS_DIR, "gan-scenes-64"),
    "autoregressive": os.path.join(WEIGHTS_DIR, "ar-scenes-64"),
}
FAMILIES = ("gan", "autoregressive", "diffusers", "null")


def resolve_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str, family: str):
    """``auto``: float32 on CPU; on CUDA bf16, or fp16 for diffusers pipelines."""
    import torch

    if name == "auto":
        if device == "cpu":
            return torch.float32
        return torch.float16 if family == "diffusers" else torch.bfloat16
    return getattr(torch, name)


def model_path(family: str, path: str | None) -> str:
    """The configured path, or the shipped model for families that ship one."""
    if path:
        return path
    if family in SHIPPED:
        return SHIPPED[family]
    raise ValueError(f"model.path is required for model.family={family!r}")


def load_model(family: str, path: str | None, encoder: str | None = None, device: str = "cpu",
               dtype: str = "auto", scheduler: str | None = None,
               trust_remote_code: bool = False,
               options: dict[str, Any] | None = None) -> ImageModel:
    """Load one model of ``family`` onto ``device``, ready for ``encode_prompt``/``generate``."""
    if family == "null":
        from models.null import NullImageModel
        return NullImageModel()
    torch_dtype = resolve_dtype(dtype, device, family)
    path = model_path(family, path)
    if family == "gan":
        from models.gan import GanImageModel
        return GanImageModel.from_pretrained(path, encoder_path=encoder, device=device,
                                             dtype=torch_dtype,
                                             trust_remote_code=trust_remote_code)
    if family == "autoregressive":
        from models.autoregressive import ARImageModel
        return ARImageModel.from_pretrained(path, encoder_path=encoder, device=device,
                                            dtype=torch_dtype,
                                            trust_remote_code=trust_remote_code,
                                            options=options or {})
    if family == "diffusers":
        from models.diffusion import DiffusersImageModel
        return DiffusersImageModel.from_pretrained(path, device=device, dtype=torch_dtype,
                                                   scheduler=scheduler,
                                                   trust_remote_code=trust_remote_code,
                                                   options=options or {})
    raise ValueError(f"unknown model.family {family!r}; choose one of {', '.join(FAMILIES)}")


def check_model_spec(family: str, path: str | None, width: int | None,
                     height: int | None) -> None:
    """Cheap checks from config files alone (no weights), so a bad spec fails before actors.

    Hub ids cannot be checked offline and pass through to the actors.
    """
    import json

    if family == "null":
        return
    path = model_path(family, path)
    is_local = os.path.exists(path) or path.startswith((".", "/", "~"))
    if not is_local:
        return
    manifest = "model_index.json" if family == "diffusers" else "config.json"
    config_file = os.path.join(os.path.expanduser(path), manifest)
    if not os.path.isfile(config_file):
        raise ValueError(f"{path} is not a {family} model folder ({manifest} missing)")
    if family == "diffusers":
        for size, name in ((width, "width"), (height, "height")):
            if size is not None and size % 8:
                raise ValueError(f"generation.{name}={size} must be a multiple of 8")
        return
    with open(config_file, encoding="utf-8") as f:
        native = json.load(f).get("image_size")
    for size, name in ((width, "width"), (height, "height")):
        if native and size is not None and size != native:
            raise ValueError(f"{path} draws {native}x{native} images; set generation.{name}="
                             f"{native} or leave it unset")
