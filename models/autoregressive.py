"""Autoregressive text-to-image: a decoder-only transformer over VQ image tokens.

The sequence is ``[text prefix] [BOS] [img_0 ... img_{N-2}]`` and position ``p`` after
the prefix predicts ``img_p``. The prefix is the encoder's per-token states projected
to the model width (not the pooled vector: pooled MiniLM barely tells "red on blue"
from "blue on red"). Padded prefix tokens are masked out as keys, so a prompt's
prefix means the same in any batch. Training replaces a share of the prefixes with
one learned null token, which enables classifier-free guidance at sampling time.
Sampling (:mod:`models.ar_sampling`) runs token by token with a KV cache, temperature
and top-k, and draws from a per-sample ``torch.Generator``. With ``batch_invariant``
(the pipeline's ``runtime.deterministic``) each image is sampled alone, so it is
byte-identical whatever its batch; without it a whole batch advances together, one
KV-cached forward per token. The tokens are turned into pixels by the VQ-VAE of
:mod:`models.vq`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.ar_sampling import sample_tokens
from models.base import GenerationParams, ImageModel, to_uint8
from models.encoders import TextEncoder, TextEncoding
from models.folder import CONFIG_NAME, WEIGHTS_NAME, load_weights, resolve_encoder
from models.vq import VQVAE, VQConfig

SAMPLING_OPTIONS = ("temperature", "top_k", "guidance_scale")


@dataclass
class ARConfig:
    """Hyper-parameters of one AR model (and its tokenizer, under ``vq``); ``config.json``."""

    image_size: int = 64  # native square resolution; must equal vq["image_size"]
    text_dim: int = 384  # encoder hidden size (MiniLM-L6: 384)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    dropout: float = 0.0
    cond_drop: float = 0.1  # share of training prefixes replaced by the null prompt
    temperature: float = 1.0  # sampling defaults; 0 = greedy
    top_k: int = 0  # 0 = no top-k filtering
    guidance_scale: float = 1.0  # 1 = no classifier-free guidance
    vq: dict = field(default_factory=lambda: VQConfig().to_dict())
    encoder: str | None = None  # encoder folder; None = the shipped MiniLM
    family: str = "autoregressive"

    @classmethod
    def tiny(cls, **overrides) -> ARConfig:
        """A small config for tests: 16x16 images as 4x4 tokens, a 2-layer 32-wide model."""
        base = dict(image_size=16, d_model=32, n_layers=2, n_heads=2,
                    vq=VQConfig.tiny().to_dict())
        return cls(**{**base, **overrides})

    @classmethod
    def from_dict(cls, data: dict) -> ARConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def vq_config(self) -> VQConfig:
        return VQConfig.from_dict(self.vq)

    @property
    def n_tokens(self) -> int:
        return self.vq_config.grid ** 2


class KVCache:
    """One layer's keys/values of the earlier positions, (B, H, L, hd), in buffers of fixed
    capacity: appending writes in place, where ``torch.cat`` would copy the whole cache
    at every token (most of a batched sampling step's time). ``dtype`` (default: that of
    the first keys) is how they are stored: see :func:`fast_kv_dtype`."""

    def __init__(self, capacity: int, dtype: torch.dtype | None = None):
        self.capacity, self.length, self.dtype = capacity, 0, dtype
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this call's (B, H, n, hd) keys/values; returns all of them so far."""
        if self.keys is None:
            shape = (*k.shape[:2], self.capacity, k.shape[3])
            self.keys = k.new_empty(shape, dtype=self.dtype or k.dtype)
            self.values = torch.empty_like(self.keys)
        end = self.length + k.shape[2]
        self.keys[:, :, self.length:end], self.values[:, :, self.length:end] = k, v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class SelfAttention(nn.Module):
    """Multi-head attention that appends this call's keys/values to ``cache`` if given."""

    def __init__(self, cfg: ARConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.append(k, v)
            q = q.to(k.dtype)  # attention in the cache's dtype, the rest in the model's
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop).to(x.dtype)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ARConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
                                 nn.Linear(4 * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask, cache)
        return x + self.mlp(self.ln2(x))


def _causal_mask(prefix_keys: torch.Tensor, length: int) -> torch.Tensor:
    """(B, 1, L, L) attention mask: causal, minus padded prefix keys (B, T); L - T image slots."""
    pad = prefix_keys.new_ones(prefix_keys.shape[0], length - prefix_keys.shape[1])
    keys = torch.cat([prefix_keys, pad], 1)
    causal = torch.ones(length, length, dtype=torch.bool, device=keys.device).tril()
    return causal[None, None] & keys[:, None, None, :]


class ImageTransformer(nn.Module):
    """Text prefix (B, T, text_dim) + image tokens -> next-token logits over the codebook."""

    def __init__(self, cfg: ARConfig):
        super().__init__()
        d, k = cfg.d_model, cfg.vq_config.codebook_size
        self.bos = k  # the extra embedding row
        self.text_proj = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, d))
        self.null_text = nn.Parameter(torch.zeros(1, d))
        self.tok_emb = nn.Embedding(k + 1, d)
        self.pos_emb = nn.Parameter(torch.randn(cfg.n_tokens, d) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, k, bias=False)

    def embed_text(self, text: torch.Tensor, mask: torch.Tensor,
                   drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected prefix (B, T, d) and key mask (B, T); ``drop`` rows get the null prompt."""
        prefix, mask = self.text_proj(text), mask.bool()
        if drop is not None:
            pad = self.null_text.new_zeros(prefix.shape[1] - 1, prefix.shape[2])
            null = torch.cat([self.null_text, pad]).to(prefix.dtype)  # (T, d)
            prefix = torch.where(drop[:, None, None], null, prefix)
            first_only = torch.arange(mask.shape[1], device=mask.device) == 0
            mask = torch.where(drop[:, None], first_only, mask)
        return prefix, mask

    def _run(self, x: torch.Tensor, mask: torch.Tensor | None,
             caches: list[KVCache] | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, mask, None if caches is None else caches[i])
        return self.head(self.ln_f(x))

    def forward(self, text: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, n, K): position p predicts ``ids[:, p]`` from ids[:, :p]."""
        prefix, key_mask = self.embed_text(text, mask, drop)
        bos = torch.full_like(ids[:, :1], self.bos)
        inputs = torch.cat([bos, ids[:, :-1]], 1)
        x = torch.cat([prefix, self.tok_emb(inputs) + self.pos_emb[:ids.shape[1]]], 1)
        return self._run(x, _causal_mask(key_mask, x.shape[1]))[:, prefix.shape[1]:]

    def prefill(self, prefix: torch.Tensor, key_mask: torch.Tensor,
                kv_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, list]:
        """Run prefix + BOS once; returns logits for img_0 (B, K) and the per-layer KV cache
        (stored in ``kv_dtype``, default the model's)."""
        bos = self.tok_emb.weight[self.bos] + self.pos_emb[0]
        x = torch.cat([prefix, bos.expand(prefix.shape[0], 1, -1)], 1)
        # room for the prefix, BOS and every image token but the last (never fed back)
        caches = [KVCache(x.shape[1] + self.pos_emb.shape[0] - 1, kv_dtype)
                  for _ in self.blocks]
        return self._run(x, _causal_mask(key_mask, x.shape[1]), caches)[:, -1], caches

    def decode(self, ids: torch.Tensor, pos: int, caches: list, keys: torch.Tensor) -> torch.Tensor:
        """Feed token ``ids`` (B,) at input position ``pos``; logits for the next token (B, K)."""
        x = (self.tok_emb(ids) + self.pos_emb[pos])[:, None]
        return self._run(x, keys[:, None, None, :], caches)[:, -1]


class ARImageModel(ImageModel):
    """A trained (or random) AR transformer, its VQ tokenizer and text encoder, for the pipeline."""

    def __init__(self, transformer: ImageTransformer, vq: VQVAE, encoder: TextEncoder,
                 config: ARConfig, model_id: str = "", options: dict | None = None,
                 batch_invariant: bool = True):
        if encoder.dim != config.text_dim:
            raise ValueError(f"encoder {encoder.path} has hidden size {encoder.dim}, "
                             f"but the model was built for text_dim={config.text_dim}")
        unknown = set(options or {}) - set(SAMPLING_OPTIONS)
        if unknown:
            raise ValueError(f"unknown autoregressive option(s) {sorted(unknown)}; "
                             f"known: {list(SAMPLING_OPTIONS)}")
        self.transformer = transformer.eval().requires_grad_(False)
        self.vq = vq.eval().requires_grad_(False)
        self.encoder, self.config, self.model_id = encoder, config, model_id
        self.defaults = {**{k: getattr(config, k) for k in SAMPLING_OPTIONS}, **(options or {})}
        self.native_size = (config.image_size, config.image_size)
        # True: one sequence per image (images independent of their batch); False: the
        # batch samples together, several times faster, image bytes may vary with the batch.
        # The pipeline worker sets it from runtime.deterministic.
        self.batch_invariant = batch_invariant

    @classmethod
    def from_config(cls, config: ARConfig, encoder: TextEncoder | None = None,
                    seed: int = 0) -> ARImageModel:
        """Random weights (seeded); ``encoder`` defaults to the one ``config`` names."""
        encoder = encoder or TextEncoder(config.encoder)
        config.text_dim = encoder.dim
        torch.manual_seed(seed)
        return cls(ImageTransformer(config), VQVAE(config.vq_config), encoder, config,
                   model_id="random-autoregressive")

    @classmethod
    def from_pretrained(cls, path: str, encoder_path: str | None = None, device: str = "cpu",
                        dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                        options: dict | None = None) -> ARImageModel:
        """Load a folder written by :meth:`save_pretrained` (or exported by training).

        ``encoder_path`` overrides the encoder in the config (None there means the
        shipped MiniLM; a relative path is relative to ``path``); ``options`` override
        the sampling defaults (``temperature``, ``top_k``, ``guidance_scale``) and may
        set ``batch_invariant`` (default True: one sequence per image).
        """
        options = dict(options or {})
        batch_invariant = bool(options.pop("batch_invariant", True))
        config = load_config(path)
        encoder = TextEncoder(encoder_path or resolve_encoder(path, config.encoder),
                              device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        transformer, vq = ImageTransformer(config), VQVAE(config.vq_config)
        transformer.load_state_dict(load_weights(path, "transformer."))
        vq.load_state_dict(load_weights(path, "vq."))
        return cls(transformer.to(device, dtype), vq.to(device, dtype), encoder, config,
                   model_id=path, options=options, batch_invariant=batch_invariant)

    def save_pretrained(self, path: str) -> None:
        """Write ``config.json`` and ``model.safetensors`` (transformer + whole VQ-VAE)."""
        save_model_folder(path, self.config, self.transformer, self.vq)

    def encode_prompt(self, prompts: list[str],
                      negative_prompts: list[str | None] | None = None) -> TextEncoding:
        """Per-token encoder states; negative prompts are refused (guidance uses a null prompt)."""
        if negative_prompts and any(negative_prompts):
            raise ValueError("the autoregressive family cannot use negative prompts; "
                             "drop the negative_prompt column or pick a diffusion model")
        return self.encoder.encode(prompts)

    def sampling(self, params: GenerationParams) -> dict:
        """Temperature, top-k and guidance for one call: params.extra, then defaults."""
        chosen = {**self.defaults, **{k: v for k, v in params.extra.items()
                                      if k in SAMPLING_OPTIONS}}
        if params.guidance_scale is not None:
            chosen["guidance_scale"] = params.guidance_scale
        return dict(temperature=float(chosen["temperature"]), top_k=int(chosen["top_k"]),
                    guidance_scale=float(chosen["guidance_scale"]))

    @torch.inference_mode()
    def generate(self, embeds: TextEncoding, seeds: list[int],
                 params: GenerationParams) -> np.ndarray:
        """One image per row, (B, H, W, 3) uint8; each row samples with its own seeded generator."""
        self.check_params(params)
        if len(seeds) != len(embeds):
            raise ValueError(f"got {len(seeds)} seeds for {len(embeds)} prompts")
        knobs = self.sampling(params)
        if not self.batch_invariant:
            return self._batch(embeds, seeds, knobs)
        # one sequence per image on its unpadded prefix: batched kernels change float
        # rounding, and image i must not depend on the rest of its batch
        return np.concatenate([self._one(embeds, i, seed, knobs) for i, seed in enumerate(seeds)])

    def _one(self, embeds: TextEncoding, i: int, seed: int, knobs: dict) -> np.ndarray:
        param = next(self.transformer.parameters())
        keep = embeds.mask[i].bool()
        text = embeds.tokens[i][keep][None].to(param.device, param.dtype)
        mask = torch.ones(text.shape[:2], dtype=torch.bool, device=param.device)
        generator = torch.Generator("cpu").manual_seed(seed)
        ids = sample_tokens(self.transformer, text, mask, [generator], **knobs)
        return to_uint8(self.vq.decode(ids))

    def _batch(self, embeds: TextEncoding, seeds: list[int], knobs: dict) -> np.ndarray:
        """All rows at once on padded prefixes (pads are masked keys); one generator per row."""
        param = next(self.transformer.parameters())
        text = embeds.tokens.to(param.device, param.dtype)
        mask = embeds.mask.bool().to(param.device)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        ids = sample_tokens(self.transformer, text, mask, generators, **knobs,
                            kv_dtype=fast_kv_dtype(param))
        return to_uint8(self.vq.decode(ids))


def grow_blocks(state: dict[str, torch.Tensor], config: ARConfig,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """Transformer weights for ``config.n_layers`` blocks from a state with fewer.

    The missing blocks are appended after the trained ones as identity maps: freshly
    initialised, but with the attention's and the MLP's output projections zeroed, so
    each adds nothing to its residual stream and the grown model computes what the
    trained one did (a function-preserving deepening, as in Net2Net or progressive
    stacking) until training moves them.
    """
    held = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    if held > config.n_layers:
        raise ValueError(f"n_layers {config.n_layers} < the {held} blocks of the weights: "
                         "a fine-tune can add transformer blocks, not drop them")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = ImageTransformer(config).state_dict()
    grown = dict(state)
    for name, value in fresh.items():
        if name not in grown:
            silent = name.endswith((".attn.proj.weight", ".attn.proj.bias",
                                    ".mlp.2.weight", ".mlp.2.bias"))
            grown[name] = torch.zeros_like(value) if silent else value
    return grown


def fast_kv_dtype(param: torch.Tensor) -> torch.dtype | None:
    """bfloat16 for the KV cache of batched sampling on an AVX-512 CPU, else None (keep).

    A batched step reads every row's whole cache once per layer: at batch 16 with
    guidance that is ~10 MB per layer, and on a CPU the read, not the arithmetic, is
    most of the step. Halving it made batch 16 ~1.25x faster per image here (AVX-512
    with bf16). Without AVX-512, bf16 arithmetic may cost more than it saves. Only the
    batched path uses it: batch-invariant sampling keeps the model's dtype.
    """
    if param.device.type != "cpu" or param.dtype != torch.float32:
        return None
    return torch.bfloat16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else None


def load_config(path: str) -> ARConfig:
    """The :class:`ARConfig` stored in a model folder."""
    with open(os.path.join(path, CONFIG_NAME)) as f:
        return ARConfig.from_dict(json.load(f))


def save_model_folder(path: str, config: ARConfig, transformer: ImageTransformer,
                      vq: VQVAE) -> None:
    """Write a folder that :meth:`ARImageModel.from_pretrained` loads."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    state = {f"transformer.{k}": v for k, v in transformer.state_dict().items()}
    state.update({f"vq.{k}": v for k, v in vq.state_dict().items()})
    save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()},
              os.path.join(path, WEIGHTS_NAME))
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(asdict(config), f, indent=2)
