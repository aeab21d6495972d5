"""Model families, registered once: everything the rest of synthset needs to know about one.

The job spec (which names exist, default batch size), the model loader, the pre-flight
check, the CLI, ``synthset bench`` and ``synthset train`` all read this table. It holds
names and small functions only; a family's heavy module is imported when it loads.

Adding a built-in family: one module with an :class:`~models.base.ImageModel` and one
:class:`Family` entry in ``FAMILIES``. A team's own model needs no change here: either
``model.family: custom`` with ``model.factory: "package.module:callable"``, or an entry
point in the ``synthset.models`` group whose name is then a family name (see
``docs/custom-models.md``).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
ENTRY_POINT_GROUP = "synthset.models"


@dataclass(frozen=True)
class Family:
    """One model family: how to load it and what the pipeline should assume about it."""

    name: str
    loader: str  # "module:callable" (path, device, dtype, encoder, scheduler, trust, options)
    batch_size: int  # runtime.batch_size 'auto'
    description: str
    weights: str | None = None  # shipped weights folder (default model.path)
    manifest: str | None = None  # file a local model folder must hold
    sizes: str = "native"  # "native": config.json's image_size; "multiple of 8"; "any"
    trainer: str | None = None  # "module:callable" that runs a training config
    needs_path: bool = True  # model.path (or shipped weights) required
    uses_steps: bool = False  # generation.steps means something to it

    def load_callable(self) -> Callable[..., Any]:
        return import_object(self.loader, "model loader")

    def default_path(self, path: str | None) -> str | None:
        """The configured path, or the shipped model for families that ship one."""
        if path:
            return path
        if self.weights:
            return os.path.join(WEIGHTS_DIR, self.weights)
        if self.needs_path:
            raise ValueError(f"model.path is required for model.family={self.name!r}")
        return None

    def check(self, path: str | None, width: int | None, height: int | None) -> None:
        """Cheap checks from config files alone (no weights), before any actor starts.
        Hub ids cannot be checked offline and pass through to the actors."""
        path = self.default_path(path)
        if not path or not self.manifest:
            return
        if not (os.path.exists(path) or path.startswith((".", "/", "~"))):
            return  # a hub id
        config_file = os.path.join(os.path.expanduser(path), self.manifest)
        if not os.path.isfile(config_file):
            raise ValueError(f"{path} is not a {self.name} model folder ({self.manifest} "
                             "missing)")
        if self.sizes == "multiple of 8":
            for size, name in ((width, "width"), (height, "height")):
                if size is not None and size % 8:
                    raise ValueError(f"generation.{name}={size} must be a multiple of 8")
        elif self.sizes == "native":
            with open(config_file, encoding="utf-8") as f:
                native = json.load(f).get("image_size")
            for size, name in ((width, "width"), (height, "height")):
                if native and size is not None and size != native:
                    raise ValueError(f"{path} draws {native}x{native} images; set "
                                     f"generation.{name}={native} or leave it unset")


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("gan", "models.registry:load_gan", 64, "text-conditional GAN (DF-GAN-style fusion)",
           weights="gan-scenes-64", manifest="config.json",
           trainer="models.train.gan_run:train_gan"),
    Family("autoregressive", "models.registry:load_autoregressive", 16,
           "VQ tokenizer + transformer drawing image tokens one by one",
           weights="ar-scenes-64", manifest="config.json",
           trainer="models.train.ar_run:train_autoregressive"),
    Family("diffusers", "models.registry:load_diffusers", 8,
           "any diffusers text-to-image pipeline (SD, SDXL, SD3, FLUX)",
           manifest="model_index.json", sizes="multiple of 8", uses_steps=True),
    Family("null", "models.registry:load_null", 64, "seeded images without a model, for overhead "
           "measurements", sizes="any", needs_path=False),
    Family("custom", "models.registry:load_custom", 8, "your own generator: model.factory = "
           "'package.module:callable'", sizes="any", needs_path=False, uses_steps=True),
)}


def family_names() -> list[str]:
    """Every family a job may name: the table, then installed ``synthset.models`` plugins."""
    return [*FAMILIES, *(n for n in _plugins() if n not in FAMILIES)]


def get_family(name: str) -> Family:
    """The family called ``name`` (built in, or a ``synthset.models`` entry point)."""
    if name in FAMILIES:
        return FAMILIES[name]
    plugins = _plugins()
    if name in plugins:
        return Family(name, "models.registry:load_custom", 8, f"plugin {plugins[name]}",
                      sizes="any", needs_path=False)
    raise ValueError(f"unknown model.family {name!r}; choose one of "
                     f"{', '.join(family_names())}")


def plugin_factory(name: str) -> str | None:
    """The ``module:callable`` of the ``synthset.models`` entry point ``name``, if any."""
    return _plugins().get(name)


def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def import_object(path: str, what: str) -> Any:
    """``package.module:attribute`` → the object, or a ValueError saying what failed."""
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{what} {path!r} should look like 'package.module:callable'")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what} {path!r} cannot be imported: {type(e).__name__}: {e}") from e
    return obj
