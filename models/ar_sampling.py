"""Token-by-token sampling for :class:`models.autoregressive.ImageTransformer`.

A KV cache makes each step cost one position instead of the whole sequence;
temperature, top-k and classifier-free guidance (against the null prompt) shape
the next-token distribution, and every row draws from its own ``torch.Generator``
so a sample's tokens depend on its seed alone.
"""

from __future__ import annotations

import torch
from torch import nn


def _pick(logits: torch.Tensor, generators: list[torch.Generator], temperature: float,
          top_k: int) -> torch.Tensor:
    """Next token per row (B,) from logits (B, K); each row draws from its own generator."""
    logits = logits.float().cpu()  # sample on the CPU: the same draws on every device
    if temperature <= 0:
        return logits.argmax(1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[1]:
        kth = logits.topk(top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    # inverse-CDF sampling with one uniform per row from the row's own generator: one
    # vectorised search for the whole batch, where a multinomial call per row cost ~75 us
    # each (a tenth of a batched step at batch 16)
    cdf = logits.softmax(1).cumsum(1)
    u = torch.cat([torch.rand(1, generator=g) for g in generators])  # (B,)
    picked = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return picked.clamp_max(logits.shape[1] - 1)  # u * total can round up to the total


def _grow(keys: torch.Tensor) -> torch.Tensor:
    return torch.cat([keys, torch.ones_like(keys[:, :1])], 1)


def _guide(logits: torch.Tensor, batch: int, scale: float) -> torch.Tensor:
    # rows [0, batch) are conditional, [batch, 2 * batch) unconditional
    if scale == 1.0:
        return logits
    cond, uncond = logits[:batch].float(), logits[batch:].float()
    return uncond + scale * (cond - uncond)


@torch.no_grad()
def sample_tokens(model: nn.Module, text: torch.Tensor, mask: torch.Tensor,
                  generators: list[torch.Generator], temperature: float = 1.0, top_k: int = 0,
                  guidance_scale: float = 1.0, use_cache: bool = True,
                  kv_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sample image token ids (B, N) for text (B, T, D) / mask (B, T), one token at a time.

    With ``use_cache=False`` every step reruns the whole sequence (for testing the cache);
    ``kv_dtype`` stores the cache (and runs attention) in another dtype.
    """
    batch, n = text.shape[0], model.pos_emb.shape[0]
    drop = None
    if guidance_scale != 1.0:  # unconditional twins of every row, for classifier-free guidance
        text, mask = text.repeat(2, 1, 1), mask.repeat(2, 1)
        drop = torch.arange(2 * batch, device=text.device) >= batch
    ids = torch.zeros(text.shape[0], n, dtype=torch.long, device=text.device)
    prefix, keys = model.embed_text(text, mask, drop)
    logits, caches = None, None
    if use_cache:
        logits, caches = model.prefill(prefix, keys, kv_dtype)
        keys = _grow(keys)  # the BOS position
    for p in range(n):
        if not use_cache:
            logits = model(text, mask, ids[:, :p + 1], drop)[:, p]
        elif p:
            keys = _grow(keys)
            logits = model.decode(ids[:, p - 1], p, caches, keys)
        token = _pick(_guide(logits, batch, guidance_scale), generators, temperature, top_k)
        ids[:, p] = token.to(ids.device).repeat(text.shape[0] // batch)
    return ids[:batch]
