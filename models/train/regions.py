"""Per-pixel weights for the generator's L1 term, from boxes the training data gives.

A region that decides an attribute can be a few pixels of the image (a cartoon
character's mouth is ~1.5% of it), so a plain mean L1 barely sees it. With
``region_weights`` the data carries K boxes per image (``data.box_column``) and the L1
inside box k counts ``region_weights[k]`` times.
"""

from __future__ import annotations

import torch


def region_weight_map(boxes: torch.Tensor, factors: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, S, S) weights: ``factors[k]`` where a pixel's centre lies in box k, else 1.

    ``boxes`` (B, 4K) holds x0, y0, x1, y1 per box as fractions of the image side;
    where boxes overlap the largest factor wins (a mouth inside a face keeps its own).
    """
    b = boxes.view(len(boxes), -1, 4)  # (B, K, 4)
    if b.shape[1] != len(factors):
        raise ValueError(f"the data gives {b.shape[1]} boxes per image but region_weights "
                         f"has {len(factors)} factors")
    centres = (torch.arange(size, device=boxes.device, dtype=boxes.dtype) + 0.5) / size
    in_x = (centres >= b[..., 0:1]) & (centres <= b[..., 2:3])  # (B, K, S)
    in_y = (centres >= b[..., 1:2]) & (centres <= b[..., 3:4])
    inside = in_y[..., :, None] & in_x[..., None, :]  # (B, K, S, S)
    weights = torch.where(inside, factors.to(boxes).view(1, -1, 1, 1), torch.ones(()))
    return weights.amax(1, keepdim=True).clamp(min=1)


def weighted_l1(fake: torch.Tensor, real: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """mean|fake - real|, each pixel counted ``weights`` times (None: the plain mean)."""
    diff = (fake - real).abs()
    return diff.mean() if weights is None else (diff * weights).mean()
