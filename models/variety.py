"""Variety across seeds on procedural scenes: identical pairs, and box spread against renders.

A dataset generator is judged by fidelity *and* variety: K seeds of one prompt should
not draw K copies. Two measures, per prompt group of K images:

- **identical pairs**: the share of seed pairs whose mean absolute pixel difference is
  under ``threshold`` grey levels (a model that ignores its noise scores 1.0);
- **spread ratio**: the std across seeds of the object's box centre x, y and side (read
  by :func:`models.scenes.locate`), averaged over prompts, divided by the same measured
  on training-style renders of those prompts with K different jitter seeds (ground
  truth scores about 1.0).
"""

from __future__ import annotations

import numpy as np

from models.scenes import locate, render

SAME_THRESHOLD = 2.0  # grey levels: two images closer than this look alike
REFERENCE_SEED = 1000  # jitter seeds of the reference renders (the scored renders use others)
AXES = ("x", "y", "side")


def pair_differences(group: np.ndarray) -> np.ndarray:
    """Mean absolute pixel difference (grey levels) of every pair in a (K, H, W, 3) group."""
    x = group.astype(np.float32)
    i, j = np.triu_indices(len(x), 1)
    return np.abs(x[i] - x[j]).mean(axis=(1, 2, 3))


def box_spread(groups: list[np.ndarray]) -> np.ndarray | None:
    """Mean over groups of the std across seeds of box centre x, y and side, (3,).

    Images where no object is found are left out; None if no group keeps two.
    """
    stds = []
    for group in groups:
        boxes = [box for box in map(locate, group) if box is not None]
        if len(boxes) >= 2:
            stds.append(np.std(boxes, axis=0))
    return np.mean(stds, axis=0) if stds else None


def reference_renders(combos: list[dict], k: int, size: int = 64, jitter: str = "small",
                      seed: int = REFERENCE_SEED) -> list[np.ndarray]:
    """K renders per combination, (K, size, size, 3) each, every one with its own jitter seed."""
    return [np.stack([render(c, size, np.random.default_rng([seed, i, j]), jitter)
                      for j in range(k)]) for i, c in enumerate(combos)]


def variety(groups: list[np.ndarray], reference: list[np.ndarray],
            threshold: float = SAME_THRESHOLD) -> dict:
    """Identical-pair rate, alike-prompt rate and spread ratio of ``groups`` (one per prompt).

    ``reference`` holds renders of the same prompts (see :func:`reference_renders`).
    An *alike prompt* is one whose every pair of seeds is under ``threshold``.
    """
    diffs = [pair_differences(g) for g in groups]
    flat = np.concatenate(diffs)
    spread, ref = box_spread(groups), box_spread(reference)
    ratio = None
    if spread is not None and ref is not None:
        ratio = {axis: float(s / r) for axis, s, r in zip(AXES, spread, ref, strict=True)}
    return {"k": int(len(groups[0])), "threshold": threshold,
            "identical_pair_rate": float((flat < threshold).mean()),
            "alike_prompt_rate": float(np.mean([(d < threshold).all() for d in diffs])),
            "median_pair_difference": float(np.median(flat)), "spread_ratio": ratio}


def format_cells(result: dict | None) -> list[str]:
    """Table cells: identical pairs, alike prompts, spread ratio x / y / side."""
    if not result:
        return ["-", "-", "-"]
    ratio = result["spread_ratio"]
    spread = "-" if ratio is None else " / ".join(f"{ratio[a]:.2f}" for a in AXES)
    return [f"{result['identical_pair_rate']:.3f}", f"{result['alike_prompt_rate']:.3f}", spread]
