"""Training sets of cartoon characters: a Parquet of image + caption, English and Chinese mixed.

    python -m models.cartoon_data runs/data/cartoon-64-train.parquet --n 20000 --seed 0

Each row draws a character from one split with fresh jitter and captions it one of
four ways: fully in English, fully in Chinese, partially (1-3 attributes, either
language) or free-form ("卡通风格的人物"); a partial or free-form caption pairs with
a character that is random in everything it leaves open, which is what teaches a
generator to draw varied characters for it.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image

from models import cartoon
from models.cartoon import ATTRIBUTES
from models.cartoon_latent import LAYOUTS, latent
from models.cartoon_text import caption, free_form, partial

MIX = {"en": 0.38, "zh": 0.38, "partial": 0.14, "free": 0.10}  # caption kinds, by share


def labelled_row(attrs: dict, rng: np.random.Generator, mix: dict | None = None) -> dict:
    """One caption for ``attrs``: its kind, language, text and the attributes it names."""
    mix = mix or MIX
    kind = rng.choice(list(mix), p=np.array(list(mix.values())) / sum(mix.values()))
    lang = str(kind) if kind in ("en", "zh") else ("en", "zh")[int(rng.integers(2))]
    if kind == "free":
        named, text = dict.fromkeys(ATTRIBUTES), free_form(lang, rng)
    else:
        named = partial(attrs, rng) if kind == "partial" else dict(attrs)
        text = caption(named, lang)
    return {"caption": text, "lang": lang, "kind": "full" if kind in ("en", "zh") else str(kind),
            **{a: named[a] for a in ATTRIBUTES}}


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(url: str, n: int, split_name: str = "train", size: int = 64, seed: int = 0,
                  storage_options: dict | None = None, mix: dict | None = None,
                  latent_dim: int | None = None, boxes: tuple[str, ...] = (),
                  latent_layout: str = "slice") -> None:
    """Write ``n`` captioned characters of one split to a Parquet file at any fsspec ``url``.

    Columns: ``image`` (PNG bytes), ``caption``, ``lang`` (en/zh), ``kind``
    (full/partial/free) and one column per attribute (null where the caption is silent);
    with ``latent_dim``, also ``z``: the noise that reproduces the image
    (:mod:`models.cartoon_latent`, in ``latent_layout``); with ``boxes`` (names of
    :data:`models.cartoon.PART_BOXES`), also ``boxes``: where those parts lie, in that
    order, 4 fractions of the image side each (x0, y0, x1, y1), for a loss that weights
    those regions.
    """
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    combos = cartoon.split(split_name)
    rows, images, latents, regions = [], [], [], []
    for _ in range(n):
        attrs = cartoon.random_attrs(rng, combos)
        rows.append(labelled_row(attrs, rng, mix))
        jitter = cartoon.draw_jitter(rng)
        images.append(png_bytes(cartoon.render(attrs, size, jitter=jitter)))
        if latent_dim:
            latents.append(latent(rows[-1], attrs, jitter, latent_dim, rng, latent_layout))
        if boxes:
            regions.append([v for box in cartoon.part_boxes(attrs, jitter, boxes).values()
                            for v in box])
    columns = {"image": pa.array(images, pa.binary())}
    columns.update({k: pa.array([r[k] for r in rows], pa.string()) for k in rows[0]})
    if latent_dim:
        columns["z"] = pa.array([z.tolist() for z in latents], pa.list_(pa.float32()))
    if boxes:
        columns["boxes"] = pa.array(regions, pa.list_(pa.float32()))
    with fsspec.open(url, "wb", **(storage_options or {})) as f:
        pq.write_table(pa.table(columns), f)


def main(argv: list[str] | None = None) -> None:
    """Command line: write one training (or held-out) set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="output Parquet file (any fsspec URL)")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--split", default="train", choices=["train", "heldout"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latent-dim", type=int, default=None,
                        help="also write z, the noise that reproduces each image (the GAN's z_dim)")
    parser.add_argument("--latent-layout", default="slice", choices=LAYOUTS,
                        help="how z holds the open attributes (models/cartoon_latent.py)")
    parser.add_argument("--boxes", nargs="?", const=",".join(cartoon.DEFAULT_PARTS), default="",
                        help="also write the boxes of these parts, for the trainer's "
                             f"region_weights: some of {','.join(cartoon.PART_BOXES)} "
                             f"(no value: {','.join(cartoon.DEFAULT_PARTS)})")
    parser.add_argument("--mix", default=None,
                        help="caption kinds by share, e.g. en=0.1,zh=0.1,partial=0.2,free=0.6 "
                             f"(default {','.join(f'{k}={v}' for k, v in MIX.items())})")
    args = parser.parse_args(argv)
    parts = tuple(p for p in args.boxes.split(",") if p)
    if set(parts) - set(cartoon.PART_BOXES):
        parser.error(f"--boxes: parts are {', '.join(cartoon.PART_BOXES)}; got {args.boxes!r}")
    mix = None
    if args.mix:
        mix = {k: float(v) for k, v in (part.split("=") for part in args.mix.split(","))}
        if set(mix) - set(MIX):
            parser.error(f"--mix: kinds are {', '.join(MIX)}; got {args.mix!r}")
    write_dataset(args.url, args.n, args.split, args.size, args.seed, mix=mix,
                  latent_dim=args.latent_dim, boxes=parts, latent_layout=args.latent_layout)


if __name__ == "__main__":
    main()
