"""The caption bank both training runs read: every caption's encoding, computed once, and
its near-miss neighbours (hard negatives for a matching-aware discriminator)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.encoders import TextEncoder, TextEncoding


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
