"""Fidelity per language and variety of a cartoon-character model, read by the verifier.

    python -m models.evaluate --grammar cartoon models/weights/gan-cartoon-64
    python -m models.evaluate --grammar cartoon --renders      # the verifier on true renders

Fidelity: one image per held-out combination and language (captions never seen in
training), per-attribute accuracy by :func:`models.cartoon_verify.analyse`.
Variety: one free-form prompt (default the founding 卡通风格的人物) over many seeds:
mean pairwise pixel distance against the training data's own, look-alike pairs, and
how many distinct values of each attribute the seeds draw.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from models import cartoon
from models.base import GenerationParams, ImageModel, derive_seed
from models.cartoon import ATTRIBUTES
from models.cartoon_text import FOUNDING_PROMPT, LANGUAGES, caption
from models.cartoon_verify import analyse

LOOK_ALIKE = 0.02  # mean |difference| per pixel (0..1) under which two images look the same


def score(images, combos: list[dict]) -> dict:
    """Per-attribute accuracy of ``images`` against the ``combos`` they were asked for."""
    found = [analyse(np.asarray(image)) for image in images]
    hits = {a: float(np.mean([f[a] == c[a] for f, c in zip(found, combos, strict=True)]))
            for a in ATTRIBUTES}
    every = np.mean([all(f[a] == c[a] for a in ATTRIBUTES)
                     for f, c in zip(found, combos, strict=True)])
    return {"n_images": len(combos), "accuracy": hits, "all_correct": float(every)}


def heldout_combos(limit: int | None = None, seed: int = 0) -> list[dict]:
    """The held-out split, or a fixed random subset of ``limit`` of it."""
    combos = cartoon.split("heldout")
    if limit and limit < len(combos):
        keep = np.random.default_rng(seed).choice(len(combos), limit, replace=False)
        combos = [combos[i] for i in sorted(keep)]
    return combos


def generate(model: ImageModel, prompts: list[str], seeds: list[int],
             batch_size: int = 64) -> list[np.ndarray]:
    """Images for ``prompts`` with per-row ``seeds``, at the model's native size."""
    width, height = model.native_size or (64, 64)
    params = GenerationParams(width=width, height=height)
    images: list[np.ndarray] = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        images.extend(model.generate(model.encode_prompt(prompts[chunk]), seeds[chunk], params))
    return images


def evaluate_fidelity(model: ImageModel, lang: str, limit: int | None = None,
                      seed: int = 0) -> dict:
    """Held-out fidelity of ``model`` for captions in ``lang``."""
    combos = heldout_combos(limit)
    prompts = [caption(c, lang) for c in combos]
    seeds = [derive_seed(seed, text, 0) for text in prompts]
    return {"lang": lang, "source": model.model_id,
            **score(generate(model, prompts, seeds), combos)}


def evaluate_renders(limit: int | None = None, jitter_seed: int = 0) -> dict:
    """The verifier's own accuracy on true (jittered) renders of the held-out split."""
    rng = np.random.default_rng(jitter_seed)
    combos = heldout_combos(limit)
    return {"lang": "-", "source": "renders",
            **score([cartoon.render(c, 64, rng) for c in combos], combos)}


def spread(images: list[np.ndarray]) -> tuple[float, int]:
    """Mean pairwise |difference| per pixel (0..1) and the number of look-alike pairs."""
    flat = np.stack([np.asarray(i, np.float32).ravel() / 255 for i in images])
    d = np.abs(flat[:, None, :] - flat[None, :, :]).mean(-1)
    upper = d[np.triu_indices(len(images), 1)]
    return float(upper.mean()), int((upper < LOOK_ALIKE).sum())


def evaluate_variety(model: ImageModel, prompt: str = FOUNDING_PROMPT, n_seeds: int = 32,
                     seed: int = 0) -> dict:
    """How varied ``prompt``'s images are across seeds, against random training renders."""
    images = generate(model, [prompt] * n_seeds, [derive_seed(seed, prompt, i)
                                                  for i in range(n_seeds)])
    rng = np.random.default_rng(seed)
    data = [cartoon.render(cartoon.random_attrs(rng), 64, rng) for _ in range(n_seeds)]
    model_spread, look_alikes = spread(images)
    data_spread, _ = spread(data)
    found = [analyse(np.asarray(i)) for i in images]
    distinct = {a: len({f[a] for f in found if f[a] is not None}) for a in ATTRIBUTES}
    return {"prompt": prompt, "n_seeds": n_seeds, "spread": round(model_spread, 4),
            "data_spread": round(data_spread, 4),
            "spread_ratio": round(model_spread / data_spread, 3),
            "look_alike_pairs": look_alikes, "distinct_values": distinct}


def contact_sheet(model: ImageModel, path: str, n_seeds: int = 8, n_characters: int = 3,
                  scale: int = 2) -> list[str]:
    """A PNG grid: the founding prompt and its English twin over seeds, then held-out
    characters in English and in Chinese (first column: the true render, or blank).

    Returns the row prompts, top to bottom (the image carries no text: no CJK font here).
    """
    from PIL import Image

    prompts = [FOUNDING_PROMPT, "a cartoon-style character"]
    truths: list[np.ndarray | None] = [None, None]
    for combo in heldout_combos(n_characters, seed=1):
        truth = cartoon.render(combo, 64)
        prompts += [caption(combo, "en"), caption(combo, "zh")]
        truths += [truth, truth]
    rows = []
    for prompt, truth in zip(prompts, truths, strict=True):
        images = generate(model, [prompt] * n_seeds, list(range(n_seeds)))
        first = truth if truth is not None else np.full_like(images[0], 255)
        rows.append(np.concatenate([first, *images], 1))
    grid = Image.fromarray(np.concatenate(rows, 0))
    grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST).save(path)
    return prompts


def format_table(results: list[dict]) -> str:
    """A Markdown table: one row per (source, language), one column per attribute."""
    head = ["source", "lang", "n", *ATTRIBUTES, "all"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [str(r["source"]), r["lang"], str(r["n_images"]),
                 *(f"{r['accuracy'][a]:.3f}" for a in ATTRIBUTES), f"{r['all_correct']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: fidelity per language, then variety of the founding prompt."""
    from models.registry import load_model_folder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="model folder (omit with --renders)")
    parser.add_argument("--limit", type=int, default=None, help="held-out combinations to use")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=32, help="seeds for the variety check")
    parser.add_argument("--renders", action="store_true", help="score true renders too")
    parser.add_argument("--sheet", metavar="PNG", help="also write a contact sheet here")
    args = parser.parse_args(argv)
    results = [evaluate_renders(args.limit)] if args.renders else []
    if args.model:
        model = load_model_folder(args.model)
        results += [evaluate_fidelity(model, lang, args.limit, args.seed) for lang in LANGUAGES]
    print(format_table(results))
    if args.model:
        for prompt in (FOUNDING_PROMPT, "a cartoon character"):
            print(json.dumps(evaluate_variety(model, prompt, args.seeds, args.seed),
                             ensure_ascii=False))
    if args.model and args.sheet:
        print("\n".join(["contact sheet rows:", *contact_sheet(model, args.sheet)]))


if __name__ == "__main__":
    main()
