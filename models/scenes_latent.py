"""The noise z that reproduces a training scene: what its caption leaves free, written into z.

A wide-jitter scene (``models.scenes.render(..., jitter="wide")``) is its caption plus
three free values, each uniform in [0, 1) (:func:`models.scenes.draw_free`): the side
within its size class and the centre's x and y around the named anchor. Each gets one
dimension of z, written so that z stays standard normal:

    free value u in [0, 1)  ->  z = Φ⁻¹(u)

and the remaining dimensions are plain N(0, 1). A generator trained to reproduce the
image from (caption, z) (``recon_weight`` in the GAN trainer) thus learns to place and
size the object from z; drawn at random, z then spreads the object as the data does.
The cartoon grammar does the same with its own free values (``models/cartoon_latent.py``).
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

_NORMAL = NormalDist()
_EPS = 1e-6  # keeps Φ⁻¹ finite at the ends of [0, 1)

FREE = ("side", "x", "y")  # models.scenes.render's wide-jitter values, in draw order
LATENT_DIMS = len(FREE)  # z needs at least this many dimensions


def latent(free: tuple[float, ...], z_dim: int, rng: np.random.Generator) -> np.ndarray:
    """z (z_dim,) float32 whose first dimensions encode ``free`` (side, x, y in [0, 1))."""
    if z_dim < LATENT_DIMS:
        raise ValueError(f"z_dim must be >= {LATENT_DIMS}, got {z_dim}")
    if len(free) != LATENT_DIMS:
        raise ValueError(f"free holds {FREE}, got {len(free)} values")
    z = rng.standard_normal(z_dim)
    z[:LATENT_DIMS] = [_NORMAL.inv_cdf(min(max(float(u), _EPS), 1 - _EPS)) for u in free]
    return z.astype(np.float32)


def read_latent(z: np.ndarray) -> tuple[float, ...]:
    """The free values (side, x, y in [0, 1)) that ``z`` encodes."""
    return tuple(_NORMAL.cdf(float(v)) for v in z[:LATENT_DIMS])
