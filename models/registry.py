"""Loading a model of any family onto a device, from the family table (``families.py``)."""

from __future__ import annotations

from typing import Any

from models.base import ImageModel
from models.families import get_family, import_object, plugin_factory


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


def load_model(family: str, path: str | None, encoder: str | None = None, device: str = "cpu",
               dtype: str = "auto", scheduler: str | None = None,
               trust_remote_code: bool = False, options: dict[str, Any] | None = None,
               factory: str | None = None) -> ImageModel:
    """Load one model of ``family`` onto ``device``, ready for ``encode_prompt``/``generate``."""
    fam = get_family(family)
    kwargs = dict(path=fam.default_path(path), encoder=encoder, device=device,
                  dtype=resolve_dtype(dtype, device, family), scheduler=scheduler,
                  trust_remote_code=trust_remote_code, options=dict(options or {}),
                  factory=factory or plugin_factory(family))
    model = fam.load_callable()(**kwargs)
    if not isinstance(model, ImageModel):
        raise TypeError(f"model.family {family!r} gave a {type(model).__name__}, not an "
                        "ImageModel (see docs/custom-models.md)")
    return model


def load_model_folder(path: str, device: str = "cpu") -> ImageModel:
    """A gan or autoregressive model folder, by the ``family`` its config.json records."""
    import json
    import os

    with open(os.path.join(path, "config.json")) as f:
        family = json.load(f).get("family", "gan")
    return load_model(family, path, device=device)


def check_model_spec(family: str, path: str | None, width: int | None,
                     height: int | None, factory: str | None = None) -> None:
    """Cheap checks from config files alone (no weights), so a bad spec fails before actors."""
    fam = get_family(family)
    fam.check(path, width, height)
    factory = factory or plugin_factory(family)
    if family == "custom" and not factory:
        raise ValueError("model.factory is required for model.family=custom "
                         "(e.g. 'my_package.models:make_model')")
    if factory:
        if not callable(import_object(factory, "model.factory")):
            raise ValueError(f"model.factory {factory!r} is not callable")


# The loaders named in the family table: each imports its family's module only when used.

def load_gan(path, encoder, device, dtype, trust_remote_code, **_) -> ImageModel:
    from models.gan import GanImageModel

    return GanImageModel.from_pretrained(path, encoder_path=encoder, device=device, dtype=dtype,
                                         trust_remote_code=trust_remote_code)


def load_autoregressive(path, encoder, device, dtype, trust_remote_code, options,
                        **_) -> ImageModel:
    from models.autoregressive import ARImageModel

    return ARImageModel.from_pretrained(path, encoder_path=encoder, device=device, dtype=dtype,
                                        trust_remote_code=trust_remote_code, options=options)


def load_diffusers(path, device, dtype, scheduler, trust_remote_code, options,
                   **_) -> ImageModel:
    from models.diffusion import DiffusersImageModel

    return DiffusersImageModel.from_pretrained(path, device=device, dtype=dtype,
                                               scheduler=scheduler,
                                               trust_remote_code=trust_remote_code,
                                               options=options)


def load_null(options, **_) -> ImageModel:
    from models.null import NullImageModel

    return NullImageModel(options)


def load_custom(factory, path, device, dtype, options, **_) -> ImageModel:
    """``model.factory(path=..., device=..., dtype=..., options=...)`` → an ImageModel."""
    make = import_object(factory, "model.factory")
    return make(path=path, device=device, dtype=dtype, options=options)
