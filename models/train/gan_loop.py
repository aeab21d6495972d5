"""One GAN update: hinge loss with a matching-aware term, and an EMA of the generator.

D minimises ``relu(1 - D(x, t)) + w * relu(1 + D(G(z, t), t)) + (1 - w) * relu(1 + D(x, t'))``
where ``t'`` is another caption (GAN-INT-CLS / DF-GAN: a real image under the wrong
caption is a fake), so D must check the caption, not just realism. G minimises
``-D(G(z, t), t)`` (hinge generator loss).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch

from models.encoders import TextEncoder
from models.gan import Discriminator, GanConfig, Generator
from models.train.data import CaptionedImages


@dataclass
class TextBank:
    """Encodings of every caption in the dataset, computed once: tokens (U, T, D), mask (U, T)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    neighbours: torch.Tensor | None = None  # (U, K) near-miss caption ids, -1 padded

    def take(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[ids], self.mask[ids]


def encode_captions(encoder: TextEncoder, captions: list[str], chunk: int = 256) -> TextBank:
    """Encode the (finite) caption set once; a big speed-up over encoding every batch."""
    from models.encoders import TextEncoding

    parts = [encoder.encode(captions[i:i + chunk]) for i in range(0, len(captions), chunk)]
    joined = TextEncoding.concat(parts)
    return TextBank(joined.tokens.float().cpu(), joined.mask.cpu(), caption_neighbours(captions))


def caption_neighbours(captions: list[str], max_words: int = 2) -> torch.Tensor:
    """For each caption, the captions of equal length differing in 1..max_words words.

    These near misses ("... on the left ..." vs "... on the right ...") make hard
    mismatched pairs: D cannot reject them by checking the colours alone.
    """
    by_length: dict[int, list[int]] = {}
    # Chinese captions have no spaces: their clauses (split at "，") count as words
    words = [c.replace("，", " ").split() for c in captions]
    for i, w in enumerate(words):
        by_length.setdefault(len(w), []).append(i)
    found: list[list[int]] = [[] for _ in captions]
    for ids in by_length.values():
        vocab: dict[str, int] = {}
        table = torch.tensor([[vocab.setdefault(x, len(vocab)) for x in words[i]] for i in ids])
        diff = (table[:, None, :] != table[None, :, :]).sum(-1)  # (n, n) words that differ
        for row, i in enumerate(ids):
            found[i] = [ids[j] for j in torch.nonzero((diff[row] > 0) & (diff[row] <= max_words))
                        .flatten().tolist()]
    width = max(1, max(len(f) for f in found))
    return torch.tensor([f + [-1] * (width - len(f)) for f in found])


@dataclass
class TrainSettings:
    """The optimisation knobs of one run (from the training YAML)."""

    batch_size: int = 32
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.99)
    ema_decay: float = 0.999
    mismatch_weight: float = 0.5  # share of D's fake term given to real-image/wrong-caption pairs
    hard_negatives: float = 0.5  # share of wrong captions that are near misses (see above)
    mode_seeking: float = 0.0  # weight of MSGAN's term (see _mode_seeking); 0 = off
    bf16: bool = False  # autocast on CUDA only


class GanTrainer:
    """Holds G, D, EMA(G) and their optimizers; ``step`` performs one D and one G update."""

    def __init__(self, config: GanConfig, settings: TrainSettings, data: CaptionedImages,
                 bank: TextBank, device: torch.device, seed: int = 0):
        self.config, self.settings, self.data, self.bank = config, settings, data, bank
        self.device = device
        torch.manual_seed(seed)
        self.generator = Generator(config).to(device)
        self.discriminator = Discriminator(config).to(device)
        self.ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        betas = tuple(float(b) for b in settings.betas)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), settings.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), settings.lr_d, betas=betas)
        self.sampler = torch.Generator().manual_seed(seed)
        self.step_count = 0

    def load_weights(self, generator: dict, discriminator: dict | None,
                     ema: dict | None = None) -> None:
        """Start from given weights (fine-tuning or resuming); EMA defaults to G.

        Modules the weights lack keep their initialisation (a fine-tune may add
        some); weights for modules the model lacks are an error.
        """
        for module, state in ((self.generator, generator), (self.ema, ema or generator),
                              (self.discriminator, discriminator)):
            if state:
                unexpected = module.load_state_dict(state, strict=False).unexpected_keys
                if unexpected:
                    raise ValueError(f"weights for layers this model lacks: {unexpected[:5]}")

    def _batch(self):
        n, b = len(self.data), self.settings.batch_size
        idx = torch.randint(0, n, (b,), generator=self.sampler)
        ids = self.data.caption_ids[idx]
        wrong = self._wrong_captions(ids)
        z = torch.randn(b, self.config.z_dim, generator=self.sampler)
        tok, mask = self.bank.take(ids)
        wtok, wmask = self.bank.take(wrong)
        return [t.to(self.device) for t in (self.data.images[idx], z, tok, mask, wtok, wmask)]

    def _wrong_captions(self, ids: torch.Tensor) -> torch.Tensor:
        # a different caption for every image: shift by 1..U-1 modulo U ...
        n_caps, b = self.bank.tokens.shape[0], len(ids)
        wrong = (ids + torch.randint(1, max(n_caps, 2), (b,), generator=self.sampler)) % n_caps
        if self.bank.neighbours is None or not self.settings.hard_negatives:
            return wrong
        # ... or, for a share of them, a near miss
        near = self.bank.neighbours[ids]  # (B, K)
        count = (near >= 0).sum(1)
        pick = (torch.rand(b, generator=self.sampler) * count).long().clamp(max=near.shape[1] - 1)
        hard = near[torch.arange(b), pick]
        use = (torch.rand(b, generator=self.sampler) < self.settings.hard_negatives) & (count > 0)
        return torch.where(use, hard, wrong)

    def _autocast(self):
        if self.settings.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self) -> dict[str, float]:
        """One discriminator and one generator update; returns the losses."""
        real, z, tok, mask, wtok, wmask = self._batch()
        w = self.settings.mismatch_weight
        with self._autocast():
            with torch.no_grad():
                fake = self.generator(z, tok, mask)
            d_real = torch.relu(1 - self.discriminator(real, tok, mask)).mean()
            d_fake = torch.relu(1 + self.discriminator(fake, tok, mask)).mean()
            d_wrong = torch.relu(1 + self.discriminator(real, wtok, wmask)).mean()
            d_loss = d_real + (1 - w) * d_fake + w * d_wrong
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        with self._autocast():
            fake = self.generator(z, tok, mask)
            g_loss = -self.discriminator(fake, tok, mask).float().mean()
            if self.settings.mode_seeking:
                g_loss = g_loss + self.settings.mode_seeking * self._mode_seeking(fake, z, tok,
                                                                                  mask)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self._update_ema()
        self.step_count += 1
        return dict(d_loss=d_loss.item(), g_loss=g_loss.item(), d_real=d_real.item(),
                    d_fake=d_fake.item(), d_wrong=d_wrong.item())

    def _mode_seeking(self, fake: torch.Tensor, z: torch.Tensor, tok: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
        """MSGAN (Mao et al. 2019): a second noise for half the batch; images that move
        less than their noise cost more. Without it, a caption that leaves attributes
        open ("a cartoon character") collapses to one image for every seed."""
        half = max(1, len(z) // 2)
        z2 = torch.randn(half, z.shape[1], generator=self.sampler).to(z.device)
        other = self.generator(z2, tok[:half], mask[:half])
        ratio = (fake[:half] - other).abs().mean() / (z[:half] - z2).abs().mean()
        return 1 / (ratio.float() + 1e-5)

    @torch.no_grad()
    def _update_ema(self) -> None:
        # ramp the decay up so early EMA weights are not stuck at initialisation
        decay = min(self.settings.ema_decay, (1 + self.step_count) / (10 + self.step_count))
        for pe, p in zip(self.ema.parameters(), self.generator.parameters(), strict=True):
            pe.lerp_(p, 1 - decay)

    @torch.no_grad()
    def sample(self, caption_ids: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """EMA-generator images (len(ids) * len(seeds), 3, S, S): row per caption, col per seed."""
        tok, mask = self.bank.take(caption_ids.repeat_interleave(len(seeds)))
        z = torch.stack([torch.randn(self.config.z_dim, generator=torch.Generator().manual_seed(s))
                         for s in seeds]).repeat(len(caption_ids), 1)
        return self.ema(z.to(self.device), tok.to(self.device), mask.to(self.device)).float()
