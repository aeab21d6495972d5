"""The noise z that reproduces a training character: what a caption leaves free, written into z.

A character is its caption's attributes plus what the caption does not fix: the jitter
(scale, position, tilt) and every attribute the caption leaves open. Each of those gets
one dimension of z, written so that z stays standard normal:

* jitter value x in [low, high]  ->  z = Φ⁻¹((x - low) / (high - low))
* open attribute, value k of K    ->  z drawn from N(0, 1) restricted to [Φ⁻¹(k/K), Φ⁻¹((k+1)/K))
* an attribute the caption names  ->  z drawn from N(0, 1) (it carries nothing)

and the remaining dimensions are plain N(0, 1). A generator trained to reproduce the
image from (caption, z) (``recon_weight`` in the GAN trainer) thus learns where the
character stands from z, and draws an open attribute from z, uniformly over its values
when z is random: the founding prompt's characters vary as the data's do.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from models.cartoon import ATTRIBUTES, JITTER, VALUES

_NORMAL = NormalDist()

N_JITTER = len(JITTER)
LATENT_DIMS = N_JITTER + len(ATTRIBUTES)  # z needs at least this many dimensions


def latent(named: dict, attrs: dict, jitter: tuple, z_dim: int,
           rng: np.random.Generator) -> np.ndarray:
    """z (z_dim,) float32 for a character ``attrs`` drawn with ``jitter``, captioned with
    ``named`` (its attributes, None where the caption leaves one open)."""
    if z_dim < LATENT_DIMS:
        raise ValueError(f"z_dim must be >= {LATENT_DIMS}, got {z_dim}")
    z = rng.standard_normal(z_dim)
    for i, (x, (low, high)) in enumerate(zip(jitter, JITTER.values(), strict=True)):
        z[i] = _NORMAL.inv_cdf(min(max((x - low) / (high - low), 1e-6), 1 - 1e-6))
    for j, name in enumerate(ATTRIBUTES):
        if named.get(name) is None:  # open: the value's slice of the normal distribution
            k, n = VALUES[name].index(attrs[name]), len(VALUES[name])
            u = rng.uniform(max(k / n, 1e-6), min((k + 1) / n, 1 - 1e-6))
            z[N_JITTER + j] = _NORMAL.inv_cdf(u)
    return z.astype(np.float32)


def read_latent(z: np.ndarray) -> tuple[tuple, dict]:
    """The jitter and the value of every attribute that ``z`` encodes (for open ones)."""
    u = [_NORMAL.cdf(float(v)) for v in z]
    jitter = tuple(float(low + u[i] * (high - low))
                   for i, (low, high) in enumerate(JITTER.values()))
    values = {name: VALUES[name][min(int(u[N_JITTER + j] * len(VALUES[name])),
                                     len(VALUES[name]) - 1)]
              for j, name in enumerate(ATTRIBUTES)}
    return jitter, values
