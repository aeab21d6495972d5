"""The autoregressive model's training: a VQ-VAE stage, then a transformer stage.

Steps ``[0, vq_steps)`` train the tokenizer on reconstruction; then every image is
tokenized once and the transformer learns next-token prediction on the token grids
with teacher forcing. A share (``cond_drop``) of the captions is replaced by the
null prompt so that sampling can use classifier-free guidance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.ar_sampling import sample_tokens
from models.autoregressive import ARConfig, ImageTransformer
from models.train.data import CaptionedImages
from models.train.text_bank import TextBank
from models.vq import VQVAE


def object_tokens(images: torch.Tensor, grid: int, threshold: float = 0.2) -> torch.Tensor:
    """(N, grid*grid) bool: token patches holding a pixel unlike the image's top-left one.

    ``images`` (N, 3, S, S) in [-1, 1]. On plain-background data (the scenes) these are
    the object's tokens, its edges included; ``threshold`` is in that [-1, 1] scale.
    """
    corner = images[:, :, :1, :1]
    far = (images - corner).abs().amax(1) > threshold  # (N, S, S)
    patch = images.shape[-1] // grid
    return far.view(-1, grid, patch, grid, patch).any(4).any(2).flatten(1)


@dataclass
class ARSettings:
    """The optimisation knobs of one run (from the training YAML)."""

    batch_size: int = 32
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: int = 200  # linear warm-up steps of the transformer stage; then cosine to 10%
    steps: int = 10000  # transformer steps (the cosine schedule's length)
    vq_steps: int = 3000  # tokenizer steps before the transformer stage
    vq_lr: float = 2e-3
    vq_batch_size: int = 32
    grad_clip: float = 1.0
    # loss weight of the tokens that draw the object (see object_tokens): on plain
    # backgrounds ~90% of the tokens are background, and the few edge and corner tokens
    # that tell a square from a circle get a small share of the gradient
    object_weight: float = 1.0


class ARTrainer:
    """Holds the VQ-VAE, the transformer and their optimizers; ``step`` does one update."""

    def __init__(self, config: ARConfig, settings: ARSettings, data: CaptionedImages,
                 bank: TextBank, device: torch.device, seed: int = 0):
        self.config, self.settings, self.data, self.bank = config, settings, data, bank
        self.device = device
        torch.manual_seed(seed)
        self.vq = VQVAE(config.vq_config).to(device)
        self.transformer = ImageTransformer(config).to(device)
        self.opt_vq = torch.optim.Adam(self.vq.parameters(), settings.vq_lr)
        self.opt_ar = torch.optim.AdamW(self.transformer.parameters(), settings.lr,
                                        betas=tuple(settings.betas), weight_decay=0.01)
        self.sampler = torch.Generator().manual_seed(seed)
        self.step_count = 0
        self.tokens: torch.Tensor | None = None  # (N, n_tokens), once the VQ stage is over
        self.weights: torch.Tensor | None = None  # (N, n_tokens) loss weights, or None
        # share of a wall-clock budget already spent (set by the runner under max_minutes):
        # the cosine follows whichever of steps and time runs out first
        self.time_progress = 0.0

    @property
    def total_steps(self) -> int:
        return self.settings.vq_steps + self.settings.steps

    @property
    def in_vq_stage(self) -> bool:
        return self.step_count < self.settings.vq_steps

    def load_weights(self, transformer: dict, vq: dict) -> None:
        """Start from given weights (fine-tuning or resuming)."""
        self.transformer.load_state_dict(transformer)
        self.vq.load_state_dict(vq)
        self.tokens = None

    def step(self) -> dict[str, float]:
        """One tokenizer or transformer update, depending on the stage; returns the losses."""
        losses = self._vq_step() if self.in_vq_stage else self._ar_step()
        self.step_count += 1
        return losses

    def _vq_step(self) -> dict[str, float]:
        idx = torch.randint(0, len(self.data), (self.settings.vq_batch_size,),
                            generator=self.sampler)
        self.vq.train()
        recon, loss = self.vq(self.data.images[idx].to(self.device))
        self.opt_vq.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_vq.step()
        return {"vq_loss": loss.item(), "vq_codes": float(self.vq.used_codes())}

    def _ar_step(self) -> dict[str, float]:
        ids, text, mask, drop, weight = self._ar_batch()
        self.transformer.train()
        logits = self.transformer(text, mask, ids, drop)  # (B, N, K)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten(), reduction="none")
        loss = (loss * weight.flatten()).sum() / weight.sum()
        for group in self.opt_ar.param_groups:
            group["lr"] = self._lr()
        self.opt_ar.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.transformer.parameters(), self.settings.grad_clip)
        self.opt_ar.step()
        return {"ar_loss": loss.item(), "lr": self._lr()}

    def _ar_batch(self) -> list[torch.Tensor]:
        if self.tokens is None:
            self.tokens = self.tokenize()
            if self.settings.object_weight != 1.0:
                grid = self.config.vq_config.grid
                self.weights = 1 + (self.settings.object_weight - 1) * object_tokens(
                    self.data.images, grid).float()
        b = self.settings.batch_size
        idx = torch.randint(0, len(self.data), (b,), generator=self.sampler)
        text, mask = self.bank.take(self.data.caption_ids[idx])
        drop = torch.rand(b, generator=self.sampler) < self.config.cond_drop
        weight = torch.ones(self.tokens[idx].shape) if self.weights is None else self.weights[idx]
        return [t.to(self.device) for t in (self.tokens[idx], text, mask, drop, weight)]

    def _lr(self) -> float:
        s = self.settings
        step = self.step_count - s.vq_steps
        if step < s.warmup:
            return s.lr * (step + 1) / s.warmup
        progress = min(1.0, max((step - s.warmup) / max(1, s.steps - s.warmup),
                                self.time_progress))
        return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    @torch.no_grad()
    def tokenize(self, chunk: int = 256) -> torch.Tensor:
        """Token ids (N, n_tokens) of every training image, with the tokenizer frozen."""
        self.vq.eval()
        parts = [self.vq.encode(self.data.images[i:i + chunk].to(self.device)).cpu()
                 for i in range(0, len(self.data), chunk)]
        return torch.cat(parts)

    @torch.no_grad()
    def sample(self, caption_ids: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """Images (len(ids) * len(seeds), 3, S, S), a row per caption and a column per seed.

        Samples of the transformer, or VQ reconstructions while in the VQ stage.
        """
        self.vq.eval()
        rows = caption_ids.repeat_interleave(len(seeds))
        if self.in_vq_stage:  # show what the tokenizer keeps of real images
            first = [int((self.data.caption_ids == c).nonzero()[0]) for c in rows.tolist()]
            return self.vq.decode(self.vq.encode(self.data.images[first].to(self.device)))
        self.transformer.eval()
        text, mask = (t.to(self.device) for t in self.bank.take(rows))
        generators = [torch.Generator().manual_seed(s) for _ in caption_ids for s in seeds]
        ids = sample_tokens(self.transformer, text, mask, generators, self.config.temperature,
                            self.config.top_k, self.config.guidance_scale)
        return self.vq.decode(ids).float()
