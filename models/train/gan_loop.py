"""One GAN update: hinge loss with a matching-aware term, and an EMA of the generator.

D minimises ``relu(1 - D(x, t)) + w * relu(1 + D(G(z, t), t)) + (1 - w) * relu(1 + D(x, t'))``
where ``t'`` is another caption (GAN-INT-CLS / DF-GAN: a real image under the wrong
caption is a fake), so D must check the caption, not just realism. G minimises
``-D(G(z, t), t)`` (hinge generator loss), plus, with ``mode_seeking_weight`` λ > 0, the
MSGAN mode-seeking term (Mao et al. 2019) ``λ / (mean|G(z1, t) - G(z2, t)| / mean|z1 - z2| + ε)``
over two noises for the same captions, so that G cannot ignore its noise. With
``recon_weight`` > 0 the data carries, per image, the noise z that reproduces it (what the
caption leaves free: position, open attributes; ``models/cartoon_latent.py``,
``models/scenes_latent.py``), G draws from that z and adds ``recon_weight * mean|G(z, t) - x|``
(an L1 term as in pix2pix); with ``region_weights`` the data also gives boxes per image (a
mouth, a face) inside which that L1 counts more (``regions.py``). With
``aux_attribute_weight`` > 0 (and labelled data), D also classifies each attribute of real
images and G is trained so those heads read its fakes as the caption says
(``aux_attributes.py``, AC-GAN).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch

from models.gan import Discriminator, GanConfig, Generator
from models.train.aux_attributes import AuxAttributes
from models.train.data import CaptionedImages
from models.train.regions import region_weight_map, weighted_l1
from models.train.text_bank import TextBank


def mode_seeking_ratio(fake1: torch.Tensor, fake2: torch.Tensor, z1: torch.Tensor,
                       z2: torch.Tensor) -> torch.Tensor:
    """MSGAN's mean|G(z1) - G(z2)| / mean|z1 - z2|: how far the images move per unit of noise."""
    return (fake1 - fake2).abs().mean() / (z1 - z2).abs().mean()


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
    bf16: bool = False  # autocast on CUDA only
    mode_seeking_weight: float = 0.0  # λ of the MSGAN term; 0 = plain hinge G loss
    aux_attribute_weight: float = 0.0  # weight of the AC-GAN attribute terms; 0 = off
    recon_weight: float = 0.0  # weight of the L1 term against the real image (data latents)
    region_weights: tuple[float, ...] = ()  # L1 factor inside each data box; () = plain mean


class GanTrainer:
    """Holds G, D, EMA(G) and their optimizers; ``step`` performs one D and one G update."""

    def __init__(self, config: GanConfig, settings: TrainSettings, data: CaptionedImages,
                 bank: TextBank, device: torch.device, seed: int = 0,
                 labels: tuple[torch.Tensor, dict] | None = None):
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
        self.aux = self._aux_heads(labels)

    def _aux_heads(self, labels: tuple[torch.Tensor, dict] | None) -> AuxAttributes | None:
        """The attribute heads (their weights train with D's optimizer), if the run has them."""
        if not self.settings.aux_attribute_weight:
            return None
        if labels is None:
            raise ValueError("aux_attribute_weight > 0 needs attribute labels "
                             "(data.label_columns)")
        probe = torch.zeros(1, 3, self.config.image_size, self.config.image_size)
        in_features = self.discriminator.trunk(probe.to(self.device)).numel()
        aux = AuxAttributes(*labels, in_features, self.settings.aux_attribute_weight,
                            self.device)
        self.opt_d.add_param_group({"params": list(aux.heads.parameters())})
        return aux

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
        if self.data.latents is not None:  # the noise that reproduces each image
            z = self.data.latents[idx]
        else:
            z = torch.randn(b, self.config.z_dim, generator=self.sampler)
        tok, mask = self.bank.take(ids)
        wtok, wmask = self.bank.take(wrong)
        return ids, [t.to(self.device)
                     for t in (self.data.images[idx], z, tok, mask, wtok, wmask)], \
            self._pixel_weights(idx)

    def _pixel_weights(self, idx: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, S, S) weights of the recon L1 from the data's boxes, or None (plain mean)."""
        if not self.settings.region_weights:
            return None
        if self.data.boxes is None:
            raise ValueError("region_weights needs boxes in the data (data.box_column)")
        factors = torch.tensor(self.settings.region_weights)
        return region_weight_map(self.data.boxes[idx], factors,
                                 self.config.image_size).to(self.device)

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
        ids, (real, z, tok, mask, wtok, wmask), pixel_weights = self._batch()
        w, extra = self.settings.mismatch_weight, {}
        with self._autocast():
            with torch.no_grad():
                fake = self.generator(z, tok, mask)
            real_logits, real_features = self.discriminator.forward_with_features(real, tok, mask)
            d_real = torch.relu(1 - real_logits).mean()
            d_fake = torch.relu(1 + self.discriminator(fake, tok, mask)).mean()
            d_wrong = torch.relu(1 + self.discriminator(real, wtok, wmask)).mean()
            d_loss = d_real + (1 - w) * d_fake + w * d_wrong
        if self.aux:  # the heads learn the attributes of real images
            aux_loss, extra = self.aux.real_loss(real_features, ids)
            d_loss = d_loss + aux_loss
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        g_loss, g_extra = self._generator_loss(z, tok, mask, ids, real, pixel_weights)
        extra.update(g_extra)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self._update_ema()
        self.step_count += 1
        return dict(d_loss=d_loss.item(), g_loss=g_loss.item(), d_real=d_real.item(),
                    d_fake=d_fake.item(), d_wrong=d_wrong.item(), **extra)

    def _generator_loss(self, z: torch.Tensor, tok: torch.Tensor, mask: torch.Tensor,
                        ids: torch.Tensor, real: torch.Tensor,
                        pixel_weights: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, dict[str, float]]:
        """Hinge G loss; with λ > 0 half the batch is redrawn with a second noise z2.

        The first half of the captions is drawn twice (z1 and z2) and the mode-seeking
        term compares the two halves, so the step costs what a plain one does.
        """
        weight = self.settings.mode_seeking_weight
        if weight:
            half = max(1, len(z) // 2)
            z2 = torch.randn(z[:half].shape, generator=self.sampler).to(z.device)
            z, tok, mask = torch.cat([z[:half], z2]), tok[:half].repeat(2, 1, 1), \
                mask[:half].repeat(2, 1)
            ids, real = ids[:half].repeat(2), real[:half]
            pixel_weights = None if pixel_weights is None else pixel_weights[:half]
        with self._autocast():
            fake = self.generator(z, tok, mask)
            logits, features = self.discriminator.forward_with_features(fake, tok, mask)
            adv = -logits.float().mean()
        loss, extra = adv, {}
        if self.aux:  # the heads should read the caption's attributes in the fakes
            aux_loss, extra = self.aux.fake_loss(features, ids)
            loss = loss + aux_loss
        if self.settings.recon_weight:  # (the first len(real) fakes drew the data's z)
            recon = weighted_l1(fake[:len(real)].float(), real, pixel_weights)
            loss = loss + self.settings.recon_weight * recon
            extra = {**extra, "recon_l1": recon.item()}
        if not weight:  # exactly the loss (and random draws) of runs before the options
            return loss, extra
        ratio = mode_seeking_ratio(*fake.float().chunk(2), *z.chunk(2))
        ms = weight / (ratio + 1e-5)
        return loss + ms, dict(ms_ratio=ratio.item(), ms_loss=ms.item(), **extra)

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
