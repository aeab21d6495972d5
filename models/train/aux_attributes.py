"""Auxiliary attribute classification for a GAN (AC-GAN, Odena et al. 2017).

The discriminator's trunk features feed one small classification head per labelled
attribute (face shape, expression, ...). The heads learn the attributes of *real*
images from their captions' labels; the generator is then trained so the heads read
its fakes as the caption's attributes. A caption that leaves an attribute open (a
free-form or partial caption) has label -1 there and is left out of that attribute's
loss. This gives G a direct, per-attribute signal for small geometric details that
the realness-and-match logit alone averages away.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.train.data import read_table


def attribute_labels(url: str, captions: list[str], columns: list[str],
                     caption_column: str = "caption",
                     storage_options: dict | None = None) -> tuple[torch.Tensor, dict]:
    """Labels (U, A) per unique caption (-1: the caption leaves it open) and the vocabulary.

    ``columns`` are categorical columns of the training Parquet (null = open); a
    caption's labels come from its first row (a caption names the same attributes
    wherever it appears). The vocabulary is each column's sorted distinct values,
    so it is the same on every resume.
    """
    table = read_table(url, [caption_column, *columns], storage_options)
    texts = table.column(caption_column).to_pylist()
    values = {c: table.column(c).to_pylist() for c in columns}
    vocab = {c: sorted({v for v in values[c] if v is not None}) for c in columns}
    first = {}
    for row, text in enumerate(texts):
        first.setdefault(text, row)
    labels = torch.full((len(captions), len(columns)), -1, dtype=torch.long)
    for i, text in enumerate(captions):
        row = first[text]
        for j, c in enumerate(columns):
            if values[c][row] is not None:
                labels[i, j] = vocab[c].index(values[c][row])
    return labels, vocab


class AttributeHeads(nn.Module):
    """D's trunk features (B, C, 4, 4) -> one logits tensor (B, K_a) per attribute."""

    def __init__(self, in_features: int, classes: list[int], hidden: int = 128):
        super().__init__()
        self.shared = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden),
                                    nn.LeakyReLU(0.2))
        self.heads = nn.ModuleList(nn.Linear(hidden, k) for k in classes)

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        h = self.shared(features.float())
        return [head(h) for head in self.heads]


def attribute_loss(logits: list[torch.Tensor],
                   labels: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Sum over attributes of the mean cross-entropy over rows that name it; and the
    accuracy per attribute (nan where no row names it)."""
    total, accuracy = logits[0].new_zeros(()), []
    for j, out in enumerate(logits):
        known = labels[:, j] >= 0
        if not known.any():
            accuracy.append(float("nan"))
            continue
        total = total + F.cross_entropy(out[known], labels[known, j])
        accuracy.append((out[known].argmax(1) == labels[known, j]).float().mean().item())
    return total, accuracy


class AuxAttributes:
    """The heads, the labels per caption id and the loss weight, as the GAN step uses them.

    ``real_loss`` trains the heads (and D's trunk) on real images; ``fake_loss`` is
    G's term: the heads' cross-entropy on fakes against the captions' labels.
    """

    def __init__(self, labels: torch.Tensor, vocab: dict[str, list[str]], in_features: int,
                 weight: float, device: torch.device):
        self.labels, self.names, self.weight = labels, list(vocab), weight
        self.heads = AttributeHeads(in_features, [len(v) for v in vocab.values()]).to(device)

    def real_loss(self, features: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss, accuracy = attribute_loss(self.heads(features),
                                        self.labels[ids].to(features.device))
        return self.weight * loss, {"aux_real": loss.item(), **self._named("real", accuracy)}

    def fake_loss(self, features: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss, accuracy = attribute_loss(self.heads(features),
                                        self.labels[ids].to(features.device))
        return self.weight * loss, {"aux_fake": loss.item(), **self._named("fake", accuracy)}

    def _named(self, kind: str, accuracy: list[float]) -> dict[str, float]:
        # the heads' accuracy per attribute: which attributes D (real) or G (fake) lags on
        return {f"{kind}_acc_{n}": a for n, a in zip(self.names, accuracy, strict=True)}
