"""The one interface every model family implements for the pipeline's actors.

An actor holds one :class:`ImageModel`. It first turns prompts into embeddings
(``encode_prompt``), then turns embeddings, per-sample seeds and generation
parameters into uint8 images (``generate``). Keeping the two apart lets the
pipeline cache embeddings of repeated prompts and overlap encoding with
generation.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GenerationParams:
    """What to generate, shared by one batch. ``extra`` holds family-specific knobs."""

    width: int
    height: int
    steps: int | None = None
    guidance_scale: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PromptEmbeds(abc.ABC):
    """A batch of encoded prompts, opaque to the pipeline except for selection."""

    truncated: list[bool]

    @abc.abstractmethod
    def select(self, indices: list[int]) -> PromptEmbeds:
        """The embeddings of ``indices`` only, in that order (repeats allowed)."""

    @classmethod
    @abc.abstractmethod
    def concat(cls, parts: list[PromptEmbeds]) -> PromptEmbeds:
        """Join batches of embeddings (of this same type) into one, in order."""

    def __len__(self) -> int:
        return len(self.truncated)


class ImageModel(abc.ABC):
    """A loaded text-to-image model: an encoder and a generator behind one facade."""

    #: Identifies the weights in every metadata row (a path or hub id).
    model_id: str = ""
    #: (width, height) the model draws natively; None if it takes any size.
    native_size: tuple[int, int] | None = None
    cpu_bound = True  # False when generating waits on a device, not the CPU (store threads)

    @abc.abstractmethod
    def encode_prompt(
        self, prompts: list[str], negative_prompts: list[str | None] | None = None
    ) -> PromptEmbeds:
        """Encode a batch of prompts (and optional negative prompts)."""

    @abc.abstractmethod
    def generate(
        self, embeds: PromptEmbeds, seeds: list[int], params: GenerationParams
    ) -> np.ndarray:
        """Draw one image per embedding row; returns uint8 of shape (B, H, W, 3).

        Image ``i`` depends only on ``embeds[i]``, ``seeds[i]`` and ``params``,
        never on its position in the batch.
        """

    def warmup(self, params: GenerationParams) -> None:
        """Run once per (size, steps) bucket before timing starts; compiled models need it."""
        return None

    def check_params(self, params: GenerationParams) -> None:
        """Raise ValueError if this model cannot honour ``params``."""
        if self.native_size and (params.width, params.height) != self.native_size:
            w, h = self.native_size
            raise ValueError(
                f"{self.model_id} draws {w}x{h} images; set generation.width={w} "
                f"and generation.height={h} (or leave them unset)"
            )


def derive_seed(job_seed: int, sample_id: str, image_index: int) -> int:
    """A 63-bit seed from (job seed, sample id, image index) alone.

    Independent of batch position, shard, actor and shard size, so any subset of
    a job reruns to the same images.
    """
    digest = hashlib.blake2b(
        f"{job_seed}\x1f{sample_id}\x1f{image_index}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") >> 1


def to_uint8(images: Any) -> np.ndarray:
    """(B, 3, H, W) floats in [-1, 1] (a torch tensor) to (B, H, W, 3) uint8."""
    images = images.detach().float().clamp(-1, 1)
    images = ((images + 1) * 127.5).round().to("cpu").numpy().astype(np.uint8)
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))
