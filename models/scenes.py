"""Procedural captioned scenes: one shape on a plain background, and a checker for them.

``a {size} {colour} {shape} {position} on a {background} background``. Because the
caption fixes every attribute, :func:`analyse` can read them back from any image,
which turns prompt fidelity into plain per-attribute accuracy (see models.evaluate).
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
from PIL import Image, ImageDraw

from models.scenes_latent import FREE, latent

PALETTE = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
    "yellow": (240, 220, 40), "purple": (140, 60, 200), "orange": (250, 140, 30),
    "white": (240, 240, 240), "black": (20, 20, 20),
}
COLOURS = list(PALETTE)
SHAPES = ["circle", "square", "triangle"]
SIZES = ["small", "large"]
# object centre as a fraction of (width, height)
POSITIONS = {
    "on the left": (0.25, 0.5), "on the right": (0.75, 0.5), "at the top": (0.5, 0.25),
    "at the bottom": (0.5, 0.75), "in the center": (0.5, 0.5),
}
SIDE = {"small": 0.25, "large": 0.5}  # object extent as a fraction of the image side
# opt-in wide jitter (render(..., jitter="wide")): side drawn anywhere inside its size class,
# centre anywhere within WIDE_SHIFT of its anchor on each axis. Both keep a margin from the
# checker's boundaries (side 0.375; position cells 0.125 from an anchor), so every
# captioned attribute still reads back.
WIDE_SIDE = {"small": (0.19, 0.31), "large": (0.43, 0.54)}
WIDE_SHIFT = 0.08
JITTERS = ("small", "wide")
ATTRIBUTES = ["colour", "background", "position", "shape", "size"]
IDEAL_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
_RGB = np.array(list(PALETTE.values()), dtype=np.float32)  # (8, 3)
_RGB_T = _RGB.astype(np.float64).T  # (3, 8)
_RGB_SQ = (_RGB_T ** 2).sum(0)  # (8,)


def caption(attrs: dict) -> str:
    """The caption of one attribute dict."""
    return (f"a {attrs['size']} {attrs['colour']} {attrs['shape']} {attrs['position']} "
            f"on a {attrs['background']} background")


def all_combinations() -> list[dict]:
    """Every valid attribute combination (colour != background): 1,680 of them."""
    combos = itertools.product(SIZES, COLOURS, SHAPES, POSITIONS, COLOURS)
    return [dict(size=s, colour=c, shape=sh, position=p, background=b)
            for s, c, sh, p, b in combos if c != b]


def is_heldout(attrs: dict, fraction: float = 0.1) -> bool:
    """Whether a combination belongs to the held-out split (a stable hash of its caption)."""
    return zlib.crc32(caption(attrs).encode()) % 1000 < fraction * 1000


def split(name: str, fraction: float = 0.1) -> list[dict]:
    """``"train"`` or ``"heldout"`` combinations; held-out ones never appear in training."""
    if name not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {name!r}")
    return [a for a in all_combinations() if is_heldout(a, fraction) == (name == "heldout")]


def render(attrs: dict, size: int = 64, rng: np.random.Generator | None = None,
           jitter: str = "small", free: tuple[float, float, float] | None = None) -> np.ndarray:
    """Draw one scene as uint8 (size, size, 3); ``rng`` adds shift/scale jitter.

    ``jitter="small"`` (the default, which the shipped data and demo use) shifts by up
    to 4% and shrinks by up to 15%; ``"wide"`` uses the whole of the ranges above.
    ``free`` gives the wide jitter's values themselves (see :func:`draw_free`) instead
    of drawing them from ``rng``.
    """
    if jitter not in JITTERS:
        raise ValueError(f"jitter must be one of {JITTERS}, got {jitter!r}")
    scale = 4  # draw big, then downsample: anti-aliased edges
    big = size * scale
    image = Image.new("RGB", (big, big), PALETTE[attrs["background"]])
    half = SIDE[attrs["size"]] * big / 2
    cx, cy = (f * big for f in POSITIONS[attrs["position"]])
    if free is None and rng is not None and jitter == "wide":
        free = draw_free(rng)
    if free is not None:
        half, cx, cy = _wide_geometry(attrs, big, free)
    elif rng is not None:
        half *= rng.uniform(0.85, 1.0)
        cx, cy = (_jitter(v, half, big, rng) for v in (cx, cy))
    box = [cx - half, cy - half, cx + half - 1, cy + half - 1]
    draw, fill = ImageDraw.Draw(image), PALETTE[attrs["colour"]]
    if attrs["shape"] == "circle":
        draw.ellipse(box, fill=fill)
    elif attrs["shape"] == "square":
        draw.rectangle(box, fill=fill)
    else:  # pointing up
        draw.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


def _jitter(centre: float, half: float, big: int, rng: np.random.Generator) -> float:
    # shift by up to 4% of the side but keep the whole object inside the frame
    moved = centre + rng.uniform(-0.04, 0.04) * big
    return float(np.clip(moved, half, big - half))


def draw_free(rng: np.random.Generator) -> tuple[float, float, float]:
    """What a caption leaves free under the wide jitter, each uniform in [0, 1): the side
    within its size class, and the centre's x and y within WIDE_SHIFT of the anchor."""
    return tuple(float(u) for u in rng.random(len(FREE)))


def _wide_geometry(attrs: dict, big: int, free: tuple[float, ...]) -> tuple[float, ...]:
    # half side, then the centre: around the anchor, clipped inside the frame
    # (u * (high - low) + low is how rng.uniform(low, high) draws: the data stay as before)
    low, high = WIDE_SIDE[attrs["size"]]
    half = (low + free[0] * (high - low)) * big / 2
    anchor = POSITIONS[attrs["position"]]
    cx, cy = (float(np.clip((f + (-WIDE_SHIFT + u * 2 * WIDE_SHIFT)) * big, half, big - half))
              for f, u in zip(anchor, free[1:], strict=True))
    return half, cx, cy


def nearest_colour(pixels: np.ndarray) -> np.ndarray:
    """Palette index of each RGB pixel, (..., 3) -> (...).

    |p - c|^2 = |p|^2 - 2 p.c + |c|^2, and |p|^2 is the same for every colour: one small
    matrix product instead of a (..., 8, 3) difference (several times faster, so the scene
    scorer keeps up with the store threads). Every term is an integer below 2^53, exact in
    float64, so ties break as before."""
    d = _RGB_SQ - 2 * (pixels.astype(np.float64) @ _RGB_T)  # (..., 8)
    return d.argmin(-1)


def analyse(image: np.ndarray) -> dict:
    """Read the five attributes back from a uint8 (H, W, 3) image; unreadable ones are None."""
    bg, labels, fg = _foreground(image)
    result = dict(background=COLOURS[bg], colour=None, position=None, shape=None, size=None)
    box = _box(fg)
    if box is None:
        return result
    result["colour"] = COLOURS[int(np.bincount(labels[fg], minlength=8).argmax())]
    shape, centre, side = box
    result.update(shape=shape, size="large" if side > 0.375 else "small",
                  position=min(POSITIONS, key=lambda p: np.hypot(*np.subtract(POSITIONS[p],
                                                                              centre))))
    return result


def locate(image: np.ndarray) -> tuple[float, float, float] | None:
    """The object's box centre x, y and side, as fractions of the image; None if none found.

    The same measurements :func:`analyse` turns into position and size.
    """
    box = _box(_foreground(image)[2])
    return None if box is None else (*box[1], box[2])


def _foreground(image: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    # background = the border's commonest palette colour; foreground = far from it, denoised
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    bg = int(np.bincount(nearest_colour(border), minlength=8).argmax())
    far = np.sqrt(((image.astype(np.float32) - _RGB[bg]) ** 2).sum(-1)) > 50
    labels = nearest_colour(image)
    return bg, labels, _denoise(far & (labels != bg))


def _box(fg: np.ndarray) -> tuple[str, tuple[float, float], float] | None:
    """Shape, box centre (x, y) and side of a foreground mask (fractions), or None."""
    if fg.sum() < 6:
        return None
    h, w = fg.shape
    ys, xs = np.nonzero(fg)
    shape = _shape(fg[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
    # bounding-box centre, not centroid: a triangle's centroid sits below its centre
    centre = ((xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h)
    return shape, centre, float(np.sqrt(fg.sum() / IDEAL_FILL[shape] / (h * w)))


def _shape(box: np.ndarray) -> str:
    """Shape of a cropped foreground mask from its fill ratio and top/bottom widths."""
    widths = box.sum(1)
    half = len(widths) // 2
    top, bottom = widths[:half].mean(), widths[len(widths) - half:].mean()
    # an up-pointing triangle is about three times wider in its lower half; its
    # fill ratio alone (0.5) blurs into a circle's (0.785) on small shapes
    if top < 0.6 * bottom:
        return "triangle"
    return "square" if box.mean() > 0.89 else "circle"


def _denoise(mask: np.ndarray) -> np.ndarray:
    # keep pixels with at least 5 of their 3x3 neighbourhood set: drops speckles
    padded = np.pad(mask, 1).astype(np.int8)
    h, w = mask.shape
    votes = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    return mask & (votes >= 5)


def write_dataset(url: str, n: int, split_name: str = "train", size: int = 64,
                  seed: int = 0, storage_options: dict | None = None,
                  jitter: str = "small", latent_dim: int | None = None,
                  where: dict | None = None) -> None:
    """Write ``n`` jittered scenes of one split to a Parquet file at any fsspec ``url``.

    Columns: ``image`` (PNG bytes), ``caption`` and one column per attribute; with
    ``latent_dim`` (wide jitter only), also ``z``: the noise that reproduces the image
    (:mod:`models.scenes_latent`). ``where`` keeps only the combinations with those
    attribute values (e.g. ``{"colour": "red"}``: extra rows for a pair a model misses).
    """
    import io

    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    if latent_dim and jitter != "wide":
        raise ValueError("latent_dim needs jitter='wide': z encodes the wide jitter's values")
    rng = np.random.default_rng(seed)
    combos = [c for c in split(split_name) if all(c[k] == v for k, v in (where or {}).items())]
    if not combos:
        raise ValueError(f"no {split_name} combination has {where}")
    rows = [combos[i] for i in rng.integers(0, len(combos), n)]
    pngs, latents = [], []
    for attrs in rows:
        free = draw_free(rng) if latent_dim else None
        buf = io.BytesIO()
        Image.fromarray(render(attrs, size, rng, jitter, free)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
        if latent_dim:
            latents.append(latent(free, latent_dim, rng).tolist())
    columns = {"image": pa.array(pngs, pa.binary()), "caption": [caption(a) for a in rows]}
    columns.update({k: [a[k] for a in rows] for k in ATTRIBUTES})
    if latent_dim:
        columns["z"] = pa.array(latents, pa.list_(pa.float32()))
    with fsspec.open(url, "wb", **(storage_options or {})) as f:
        pq.write_table(pa.table(columns), f)


def main(argv: list[str] | None = None) -> None:
    """``python -m models.scenes URL --n 16000``: write a training dataset."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("url", help="output Parquet file (any fsspec URL)")
    parser.add_argument("--n", type=int, default=16000)
    parser.add_argument("--split", default="train", choices=["train", "heldout"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jitter", default="small", choices=JITTERS,
                        help="small: the default shift/scale jitter; wide: see WIDE_SIDE")
    parser.add_argument("--latent-dim", type=int, default=None,
                        help="also write z, the noise that reproduces each image (the GAN's "
                             "z_dim; needs --jitter wide)")
    parser.add_argument("--where", action="append", default=[], metavar="ATTRIBUTE=VALUE",
                        help="only combinations with this value (repeatable)")
    args = parser.parse_args(argv)
    where = dict(w.split("=", 1) for w in args.where)
    write_dataset(args.url, args.n, args.split, args.size, args.seed, jitter=args.jitter,
                  latent_dim=args.latent_dim, where=where)


if __name__ == "__main__":
    main()
