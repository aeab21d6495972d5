"""A small VQ-VAE that turns images into a grid of discrete tokens and back.

The encoder downsamples ``2 ** n_down`` times (64x64 -> 8x8 with the defaults); each
cell is snapped to the nearest of ``codebook_size`` code vectors. The codebook is
learned with exponential moving averages (VQ-VAE-2) rather than gradients, and
codes nobody uses are restarted on random encoder outputs, so the whole codebook
stays alive. The autoregressive model predicts these token grids. With
``local_encoder`` each token is computed from its own patch only (:class:`PatchEncoder`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class VQConfig:
    """Hyper-parameters of one tokenizer; stored under ``vq`` in the AR model's config."""

    image_size: int = 64
    n_down: int = 3  # 64 / 2**3 = 8 tokens per side
    width: int = 64  # channels after the first downsampling; doubles once
    codebook_size: int = 512
    code_dim: int = 32
    decay: float = 0.99  # EMA decay of the codebook statistics
    commitment: float = 0.25  # weight of ||z_e - sg(z_q)||^2
    # True: each token is computed from its own patch alone (a per-patch MLP), so equal
    # patches get equal tokens. False: 3x3 convolutions let a token see its neighbours,
    # and a plain background then spreads over dozens of near-identical codes, chosen by
    # where the object is (see PatchEncoder)
    local_encoder: bool = False

    @classmethod
    def tiny(cls, **overrides) -> VQConfig:
        """A few-thousand-parameter tokenizer for tests: 16x16 images -> 4x4 tokens."""
        return cls(**{**dict(image_size=16, n_down=2, width=8, codebook_size=32,
                             code_dim=8), **overrides})

    @classmethod
    def from_dict(cls, data: dict) -> VQConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def grid(self) -> int:
        """Tokens per side."""
        return self.image_size // 2**self.n_down


class ResBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), the VQ-VAE residual unit."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, 1, 1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _widths(cfg: VQConfig) -> list[int]:
    return [cfg.width * min(2**i, 2) for i in range(cfg.n_down)]


class Encoder(nn.Module):
    """Images (B, 3, S, S) in [-1, 1] -> latents (B, code_dim, S/2^n, S/2^n)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        layers, cin = [], 3
        for w in _widths(cfg):
            layers += [nn.Conv2d(cin, w, 4, 2, 1), nn.ReLU()]
            cin = w
        layers += [nn.Conv2d(cin, cin, 3, 1, 1), ResBlock(cin), ResBlock(cin), nn.ReLU(),
                   nn.Conv2d(cin, cfg.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchEncoder(nn.Module):
    """Images -> latents like :class:`Encoder`, but each latent sees only its own patch.

    A stride-``2**n_down`` patch embedding, then 1x1 convolutions: an MLP per patch.
    With the convolutional encoder a flat background patch's latent depends on what
    lies around it, and the codebook (kept whole by dead-code restarts) splits each
    plain colour over ~50 codes (perplexity ~15 on the scenes): the transformer must
    then learn which alias the encoder picked, a rule about far-away pixels it cannot
    see from the tokens. Here a patch's token is a function of the patch: one code per
    plain colour, and the codebook's other codes go to edges and corners.
    """

    def __init__(self, cfg: VQConfig):
        super().__init__()
        patch, width = 2 ** cfg.n_down, _widths(cfg)[-1]
        self.net = nn.Sequential(
            nn.Conv2d(3, width, patch, patch), nn.ReLU(),
            nn.Conv2d(width, width, 1), nn.ReLU(),
            nn.Conv2d(width, width, 1), nn.ReLU(),
            nn.Conv2d(width, cfg.code_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Quantised latents (B, code_dim, g, g) -> images (B, 3, S, S), roughly in [-1, 1]."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = _widths(cfg)[::-1]
        layers = [nn.Conv2d(cfg.code_dim, widths[0], 3, 1, 1), ResBlock(widths[0]),
                  ResBlock(widths[0])]
        for cin, cout in zip(widths, widths[1:] + [widths[-1]]):
            layers += [nn.ReLU(), nn.ConvTranspose2d(cin, cout, 4, 2, 1)]
        layers += [nn.ReLU(), nn.Conv2d(widths[-1], 3, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Quantizer(nn.Module):
    """Nearest-code lookup with an EMA-updated codebook (no codebook gradients)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.decay = cfg.decay
        embed = torch.randn(cfg.codebook_size, cfg.code_dim) * 0.1
        self.register_buffer("embed", embed)  # (K, D)
        self.register_buffer("cluster_size", torch.ones(cfg.codebook_size))
        self.register_buffer("embed_avg", embed.clone())

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, D, g, g) -> token ids (B, g, g)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.T
                + self.embed.pow(2).sum(1)[None])
        return dist.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, g, g) -> code vectors (B, D, g, g)."""
        return F.embedding(ids, self.embed).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns straight-through quantised latents, commitment loss and ids."""
        ids = self.indices(z)
        zq = self.lookup(ids)
        if self.training:
            self._ema_update(z.detach(), ids)
        commit = F.mse_loss(z, zq.detach())
        return z + (zq - z).detach(), commit, ids

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, ids: torch.Tensor) -> None:
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        onehot = F.one_hot(ids.flatten(), self.embed.shape[0]).type(flat.dtype)  # (N, K)
        self.cluster_size.lerp_(onehot.sum(0), 1 - self.decay)
        self.embed_avg.lerp_(onehot.T @ flat, 1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + self.embed.shape[0] * 1e-5) * n
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        # restart dead codes on random latents of this batch, or they never come back
        dead = self.cluster_size < 0.25  # used less than once in ~4 batches
        if dead.any():
            pick = torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)
            self.embed[dead] = flat[pick]
            self.embed_avg[dead] = flat[pick]
            self.cluster_size[dead] = 1.0


class VQVAE(nn.Module):
    """Encoder + quantizer + decoder; ``encode``/``decode`` map images <-> token ids."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.config = cfg
        self.encoder = PatchEncoder(cfg) if cfg.local_encoder else Encoder(cfg)
        self.quantizer, self.decoder = Quantizer(cfg), Decoder(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction (B, 3, S, S) and the training loss (MSE + commitment)."""
        zq, commit, _ = self.quantizer(self.encoder(x))
        recon = self.decoder(zq)
        return recon, F.mse_loss(recon, x) + self.config.commitment * commit

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] -> token ids (B, g*g), row-major."""
        return self.quantizer.indices(self.encoder(x)).flatten(1)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, g*g) -> images (B, 3, S, S) clamped to [-1, 1]."""
        g = self.config.grid
        return self.decoder(self.quantizer.lookup(ids.view(-1, g, g))).clamp(-1, 1)

    def used_codes(self) -> int:
        """How many codes the EMA statistics consider alive."""
        return int((self.quantizer.cluster_size > 0.5).sum())
