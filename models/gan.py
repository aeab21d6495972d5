"""A text-conditional GAN: DF-GAN-style affine text fusion in every generator block.

Both networks read the encoder's per-token states through a :class:`TextPooler`:
a few learned queries attend over the tokens, so "red ... on a blue background"
and "blue ... on a red background" give different codes (the pooled MiniLM
vectors of those two have cosine 0.993). The generator maps (z, code) to a 4x4
map and upsamples it; every block modulates its features with a text-dependent
scale and shift (DF-GAN's ``Affine``), and blocks listed in ``cross_attention``
also let every pixel attend over the tokens (where an object goes is a spatial
question that a uniform scale and shift cannot answer). The discriminator is a spectral-norm
DCGAN trunk with a spatial joint head (text code tiled onto the 4x4 features,
so it can check position) plus a projection term (Miyato & Koyama 2018).

Training (``models.train.gan_loop``) uses the **hinge** loss with a
matching-aware term: real images paired with the wrong caption count as fakes
(half of those wrong captions are near misses that differ in one attribute).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn
from torch.nn.utils import spectral_norm

from models.base import GenerationParams, ImageModel, to_uint8
from models.encoders import TextEncoder, TextEncoding
from models.folder import CONFIG_NAME, WEIGHTS_NAME, load_weights, resolve_encoder


@dataclass
class GanConfig:
    """Hyper-parameters of one GAN; saved as ``config.json`` next to the weights."""

    image_size: int = 64  # native square resolution, a power of two >= 8
    z_dim: int = 64  # noise dimensions per image
    ngf: int = 32  # generator width at the last block; doubles per block up to 8x
    ndf: int = 32  # discriminator width at the first block
    cond_dim: int = 128  # text code width
    n_queries: int = 4  # learned queries of the token-attention pooler
    text_dim: int = 384  # encoder hidden size (MiniLM-L6: 384)
    encoder: str | None = None  # encoder folder; None = the shipped MiniLM
    cross_attention: tuple[int, ...] = ()  # G resolutions whose pixels also attend to tokens
    token_code: int = 0  # >0: G's text code also reads the first N tokens by position (below)
    z_affine: bool = False  # G's per-block affine fusions read z as well as the text (Affine)
    family: str = "gan"

    @classmethod
    def tiny(cls, **overrides) -> GanConfig:
        """A few-thousand-parameter config for tests (16x16 images)."""
        base = dict(image_size=16, z_dim=8, ngf=4, ndf=4, cond_dim=16, n_queries=2,
                    cross_attention=(8,), token_code=8)
        return cls(**{**base, **overrides})

    @classmethod
    def from_dict(cls, data: dict) -> GanConfig:
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["cross_attention"] = tuple(data.get("cross_attention") or ())
        return cls(**data)

    @property
    def n_blocks(self) -> int:
        n = int(np.log2(self.image_size)) - 2
        if 2 ** (n + 2) != self.image_size or n < 1:
            raise ValueError(f"image_size must be a power of two >= 8, got {self.image_size}")
        return n


class TextPooler(nn.Module):
    """Per-token states (B, T, text_dim) + mask (B, T) -> text code (B, cond_dim).

    With ``token_code`` > 0 the code adds a linear read of the first N projected
    tokens by position: attention pooling alone learnt to ignore the position
    words (measured: G's code moved 8x less for left -> right than for a colour).
    """

    def __init__(self, text_dim: int, cond_dim: int, n_queries: int, token_code: int = 0):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, cond_dim))
        self.queries = nn.Parameter(torch.randn(n_queries, cond_dim) / cond_dim**0.5)
        self.out = nn.Sequential(nn.Linear(n_queries * cond_dim, cond_dim), nn.LeakyReLU(0.2))
        self.token_code = token_code
        if token_code:
            self.by_position = nn.Linear(token_code * 32, cond_dim)
            self.squeeze = nn.Linear(cond_dim, 32)
            nn.init.zeros_(self.by_position.weight)  # a no-op until trained: safe to add later

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pool(self.proj(tokens), mask)

    def pool(self, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Projected tokens (B, T, C) -> code (B, C)."""
        scores = torch.einsum("qc,btc->bqt", self.queries, keys) / keys.shape[-1] ** 0.5
        scores = scores.masked_fill(~mask.bool()[:, None, :], float("-inf"))
        pooled = torch.einsum("bqt,btc->bqc", scores.softmax(-1), keys)  # (B, Q, C)
        code = self.out(pooled.flatten(1))
        if self.token_code:
            n = self.token_code
            small = self.squeeze(keys[:, :n]) * mask[:, :n, None].to(keys.dtype)  # (B, <=N, 32)
            small = nn.functional.pad(small, (0, 0, 0, n - small.shape[1]))
            code = code + self.by_position(small.flatten(1))
        return code


class Affine(nn.Module):
    """Text-conditioned per-channel scale and shift, initialised to identity (DF-GAN).

    With ``z_dim`` the scale and shift also read the noise (as BigGAN feeds a share of z
    to every block's conditional norm): colours come out of these shifts, so an attribute
    that only z decides (one a caption leaves open) can be drawn the way the text draws
    it. The z read starts at zero, so it can be added to trained weights.
    """

    def __init__(self, cond_dim: int, channels: int, z_dim: int = 0):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cond_dim, cond_dim), nn.ReLU(),
                                 nn.Linear(cond_dim, 2 * channels))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)
        self.from_z = nn.Linear(z_dim, cond_dim, bias=False) if z_dim else None
        if self.from_z is not None:
            nn.init.zeros_(self.from_z.weight)

    def forward(self, h: torch.Tensor, c: torch.Tensor, z: torch.Tensor | None = None
                ) -> torch.Tensor:
        hidden = self.mlp[0](c)
        if self.from_z is not None:
            hidden = hidden + self.from_z(z)
        gamma, beta = self.mlp[2](self.mlp[1](hidden))[:, :, None, None].chunk(2, dim=1)
        return h * (1 + gamma) + beta


class CrossAttention(nn.Module):
    """Every pixel (plus a learned position code) attends over the text tokens.

    Affine fusion is spatially uniform; this lets a location read "on the left".
    """

    def __init__(self, channels: int, cond_dim: int, size: int, dim: int = 64):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, channels, size, size) * 0.1)
        self.q = nn.Conv2d(channels, dim, 1)
        self.kv = nn.Linear(cond_dim, 2 * dim)
        self.out = nn.Conv2d(dim, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, _, height, width = h.shape
        q = self.q(h + self.pos).flatten(2).transpose(1, 2)  # (B, HW, dim)
        k, v = self.kv(keys).chunk(2, dim=-1)  # (B, T, dim) each
        scores = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5  # (B, HW, T)
        scores = scores.masked_fill(~mask.bool()[:, None, :], float("-inf"))
        read = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, height, width)
        return h + self.out(read)


class GBlock(nn.Module):
    """Upsample x2 (transposed conv), two text-fused conv stages, optional cross-attention."""

    def __init__(self, cin: int, cout: int, cond_dim: int, attend_at: int | None = None,
                 z_dim: int = 0):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 4, 2, 1)
        self.fuse1, self.fuse2 = Affine(cond_dim, cout, z_dim), Affine(cond_dim, cout, z_dim)
        self.conv = nn.Conv2d(cout, cout, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2)
        self.attn = CrossAttention(cout, cond_dim, attend_at) if attend_at else None

    def forward(self, h: torch.Tensor, c: torch.Tensor, keys: torch.Tensor,
                mask: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        h = self.act(self.fuse1(self.up(h), c, z))
        if self.attn is not None:
            h = self.attn(h, keys, mask)
        return h + self.act(self.fuse2(self.conv(h), c, z))


def _widths(base: int, n_blocks: int) -> list[int]:
    # widest at 4x4, halving per block down to ``base`` at full resolution
    return [base * min(2 ** (n_blocks - i), 4) for i in range(n_blocks + 1)]


class Generator(nn.Module):
    """G(z (B, z_dim), tokens (B, T, D), mask (B, T)) -> images (B, 3, S, S) in [-1, 1]."""

    def __init__(self, cfg: GanConfig):
        super().__init__()
        widths = _widths(cfg.ngf, cfg.n_blocks)
        self.text = TextPooler(cfg.text_dim, cfg.cond_dim, cfg.n_queries, cfg.token_code)
        self.fc = nn.Linear(cfg.z_dim + cfg.cond_dim, widths[0] * 16)
        self.blocks = nn.ModuleList(
            GBlock(a, b, cfg.cond_dim, 8 * 2**i if 8 * 2**i in cfg.cross_attention else None,
                   cfg.z_dim if cfg.z_affine else 0)
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True))
        )
        self.to_rgb = nn.Sequential(nn.Conv2d(widths[-1], 3, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keys = self.text.proj(tokens)  # (B, T, cond_dim)
        c = self.text.pool(keys, mask)
        h = self.fc(torch.cat([z, c], 1)).view(z.shape[0], -1, 4, 4)
        for block in self.blocks:
            h = block(h, c, keys, mask, z)
        return self.to_rgb(h)


class Discriminator(nn.Module):
    """D(images (B, 3, S, S), tokens, mask) -> realness-and-match logits (B,)."""

    def __init__(self, cfg: GanConfig):
        super().__init__()
        widths = _widths(cfg.ndf, cfg.n_blocks)[::-1]
        layers, cin = [], 3
        for w in widths[1:]:
            layers += [spectral_norm(nn.Conv2d(cin, w, 4, 2, 1)), nn.LeakyReLU(0.2)]
            cin = w
        self.trunk = nn.Sequential(*layers)  # (B, widths[-1], 4, 4)
        self.text = TextPooler(cfg.text_dim, cfg.cond_dim, cfg.n_queries)
        self.joint = nn.Sequential(
            spectral_norm(nn.Conv2d(cin + cfg.cond_dim, cin, 3, 1, 1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(cin, 1, 4, 1, 0)),
        )
        self.embed = spectral_norm(nn.Linear(cfg.cond_dim, cin))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x, tokens, mask)[0]

    def forward_with_features(self, x: torch.Tensor, tokens: torch.Tensor,
                              mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits (B,) and the trunk features (B, C, 4, 4) they were read from."""
        h = self.trunk(x)
        c = self.text(tokens, mask)
        joint = self.joint(torch.cat([h, c[:, :, None, None].expand(-1, -1, 4, 4)], 1))
        projection = (self.embed(c) * h.sum((2, 3))).sum(1)
        return joint.flatten() + projection, h


class GanImageModel(ImageModel):
    """A trained (or random) GAN generator plus its text encoder, for the pipeline."""

    def __init__(self, generator: Generator, encoder: TextEncoder, config: GanConfig,
                 model_id: str = ""):
        if encoder.dim != config.text_dim:
            raise ValueError(f"encoder {encoder.path} has hidden size {encoder.dim}, "
                             f"but the GAN was built for text_dim={config.text_dim}")
        self.generator = generator.eval().requires_grad_(False)
        self.encoder = encoder
        self.config = config
        self.model_id = model_id
        self.native_size = (config.image_size, config.image_size)

    @classmethod
    def from_config(cls, config: GanConfig, encoder: TextEncoder | None = None,
                    seed: int = 0) -> GanImageModel:
        """Random weights (seeded); ``encoder`` defaults to the one ``config`` names."""
        encoder = encoder or TextEncoder(config.encoder)
        config.text_dim = encoder.dim
        torch.manual_seed(seed)
        return cls(Generator(config), encoder, config, model_id="random-gan")

    @classmethod
    def from_pretrained(cls, path: str, encoder_path: str | None = None, device: str = "cpu",
                        dtype: torch.dtype = torch.float32,
                        trust_remote_code: bool = False) -> GanImageModel:
        """Load ``config.json`` + ``model.safetensors`` from a folder written by save_pretrained.

        ``encoder_path`` overrides the encoder recorded in the config (None there
        means the shipped MiniLM; a relative path is taken relative to ``path``).
        """
        config = load_config(path)
        encoder = TextEncoder(encoder_path or resolve_encoder(path, config.encoder),
                              device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        generator = Generator(config)
        generator.load_state_dict(load_weights(path, "generator."))
        return cls(generator.to(device=device, dtype=dtype), encoder, config, model_id=path)

    def save_pretrained(self, path: str, discriminator: Discriminator | None = None) -> None:
        """Write ``config.json`` and ``model.safetensors`` (the discriminator too, if given)."""
        save_model_folder(path, self.config, self.generator, discriminator)

    def encode_prompt(self, prompts: list[str],
                      negative_prompts: list[str | None] | None = None) -> TextEncoding:
        """Per-token encoder states; a GAN has no guidance, so negative prompts are refused."""
        if negative_prompts and any(negative_prompts):
            raise ValueError("the gan family cannot use negative prompts; "
                             "drop the negative_prompt column or pick a diffusion model")
        return self.encoder.encode(prompts)

    @torch.inference_mode()
    def generate(self, embeds: TextEncoding, seeds: list[int],
                 params: GenerationParams) -> np.ndarray:
        """One image per row, (B, H, W, 3) uint8; noise comes from a CPU generator per seed."""
        self.check_params(params)
        if len(seeds) != len(embeds):
            raise ValueError(f"got {len(seeds)} seeds for {len(embeds)} prompts")
        # one forward pass per image, on its unpadded tokens: batched GEMMs and padding
        # change float rounding, and image i must not depend on its batch
        return np.concatenate([self._one(embeds, i, seed) for i, seed in enumerate(seeds)])

    def _one(self, embeds: TextEncoding, i: int, seed: int) -> np.ndarray:
        param = next(self.generator.parameters())
        z = torch.randn(1, self.config.z_dim, generator=torch.Generator("cpu").manual_seed(seed))
        keep = embeds.mask[i].bool()
        tokens = embeds.tokens[i][keep][None].to(param.device, param.dtype)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=param.device)
        return to_uint8(self.generator(z.to(param.device, param.dtype), tokens, mask))


def load_config(path: str) -> GanConfig:
    """The :class:`GanConfig` stored in a model folder."""
    with open(os.path.join(path, CONFIG_NAME)) as f:
        return GanConfig.from_dict(json.load(f))


def save_model_folder(path: str, config: GanConfig, generator: Generator,
                      discriminator: Discriminator | None = None) -> None:
    """Write a folder that :meth:`GanImageModel.from_pretrained` loads."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    state = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    if discriminator is not None:
        state.update({f"discriminator.{k}": v for k, v in discriminator.state_dict().items()})
    save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()},
              os.path.join(path, WEIGHTS_NAME))
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(asdict(config), f, indent=2)
