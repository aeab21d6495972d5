"""The noise z that reproduces a training character: what a caption leaves free, written into z.

A character is its caption's attributes plus what the caption does not fix: the jitter
(scale, position, tilt) and every attribute the caption leaves open. The jitter takes the
first dimensions of z, x in [low, high] as z = Φ⁻¹((x - low) / (high - low)); the open
attributes follow in one of two layouts, both of which keep z standard normal:

* ``slice``: one dimension per attribute; value k of K is z drawn from N(0, 1)
  restricted to [Φ⁻¹(k/K), Φ⁻¹((k+1)/K)).
* ``argmax``: a block of K dimensions per attribute (after 8 unused ones, see below);
  value k is K standard normals whose largest is the k-th (draw K, swap the largest
  into place k). Random z picks each value with probability 1/K, as the slice does.

An attribute the caption names carries nothing (plain N(0, 1)), and the remaining
dimensions are plain N(0, 1). A generator trained to reproduce the image from
(caption, z) (``recon_weight`` in the GAN trainer) thus learns where the character
stands from z, and draws an open attribute from z, uniformly over its values when z is
random: the founding prompt's characters vary as the data's do.

Why two layouts: from the slice, a generator has to learn a non-monotone function of
one number (hair colour black, blonde, red, blue, green along one axis: no colour
channel rises or falls with it), and gradient descent gets almost no first-order signal
for that. The shipped GAN trained on it drew skin (light, tan, dark: monotone) and the
background from z but every open hair colour green. In the argmax block each value has
its own dimension that is large when the value is drawn, so a linear read-out of z
already separates the values. Its blocks start after the slice's dimensions, so a
generator fine-tuned from a slice-trained one sees those as plain noise.
"""

from __future__ import annotations

from itertools import accumulate
from statistics import NormalDist

import numpy as np

from models.cartoon import ATTRIBUTES, JITTER, VALUES

_NORMAL = NormalDist()

N_JITTER = len(JITTER)
LAYOUTS = ("slice", "argmax")
_SLICE_END = N_JITTER + len(ATTRIBUTES)
# attribute -> the first dimension of its argmax block
_STARTS = list(accumulate((len(VALUES[n]) for n in ATTRIBUTES), initial=_SLICE_END))
_BLOCKS = dict(zip(ATTRIBUTES, _STARTS[:-1], strict=True))
DIMS = {"slice": _SLICE_END,  # z needs at least this many dimensions, per layout
        "argmax": _STARTS[-1]}  # where the last block ends
LATENT_DIMS = DIMS["slice"]


def latent(named: dict, attrs: dict, jitter: tuple, z_dim: int,
           rng: np.random.Generator, layout: str = "slice") -> np.ndarray:
    """z (z_dim,) float32 for a character ``attrs`` drawn with ``jitter``, captioned with
    ``named`` (its attributes, None where the caption leaves one open)."""
    _check(layout, z_dim)
    z = rng.standard_normal(z_dim)
    for i, (x, (low, high)) in enumerate(zip(jitter, JITTER.values(), strict=True)):
        z[i] = _NORMAL.inv_cdf(min(max((x - low) / (high - low), 1e-6), 1 - 1e-6))
    for j, name in enumerate(ATTRIBUTES):
        if named.get(name) is not None:
            continue
        k, n = VALUES[name].index(attrs[name]), len(VALUES[name])
        if layout == "slice":  # the value's slice of the normal distribution
            u = rng.uniform(max(k / n, 1e-6), min((k + 1) / n, 1 - 1e-6))
            z[N_JITTER + j] = _NORMAL.inv_cdf(u)
        else:  # the block's largest entry moves to place k
            block = z[_BLOCKS[name]:_BLOCKS[name] + n]
            top = int(block.argmax())
            block[top], block[k] = block[k], block[top]
    return z.astype(np.float32)


def read_latent(z: np.ndarray, layout: str = "slice") -> tuple[tuple, dict]:
    """The jitter and the value of every attribute that ``z`` encodes (for open ones)."""
    _check(layout, len(z))
    u = [_NORMAL.cdf(float(v)) for v in z[:_SLICE_END]]
    jitter = tuple(float(low + u[i] * (high - low))
                   for i, (low, high) in enumerate(JITTER.values()))
    if layout == "slice":
        values = {name: VALUES[name][min(int(u[N_JITTER + j] * len(VALUES[name])),
                                         len(VALUES[name]) - 1)]
                  for j, name in enumerate(ATTRIBUTES)}
    else:
        values = {name: VALUES[name][int(np.argmax(z[_BLOCKS[name]:
                                                     _BLOCKS[name] + len(VALUES[name])]))]
                  for name in ATTRIBUTES}
    return jitter, values


def _check(layout: str, z_dim: int) -> None:
    """Refuse an unknown layout, or a z too short for it (written or read alike)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if z_dim < DIMS[layout]:
        raise ValueError(f"z has {z_dim} dimensions; the {layout} layout needs "
                         f">= {DIMS[layout]}")
