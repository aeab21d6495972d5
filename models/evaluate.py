"""Prompt fidelity on procedural scenes: generate captions, read attributes back, score.

    python -m models.evaluate models/weights/gan-scenes-64 --per-combo 4 --split heldout
    python -m models.evaluate --grammar cartoon models/weights/gan-cartoon-64

The checker (:func:`models.scenes.analyse`) needs no weights; run it on ground-truth
renders first (``--renders``) to see its own error rate (it should be 0). With
``--per-combo K`` >= 2 the table also reports variety across the K seeds of each
prompt (:mod:`models.variety`), against renders with the ``--jitter`` of the training data.
"""

from __future__ import annotations

import argparse

import numpy as np

from models import scenes, variety
from models.base import GenerationParams, ImageModel, derive_seed
from models.registry import load_model_folder
from models.scenes import ATTRIBUTES, analyse, caption, render

GRAMMARS = ("scenes", "cartoon")


def score(images: list[np.ndarray] | np.ndarray, combos: list[dict]) -> dict:
    """Per-attribute accuracy of ``images`` against the ``combos`` they were asked for."""
    found = [analyse(image) for image in images]
    hits = {a: np.mean([f[a] == c[a] for f, c in zip(found, combos, strict=True)])
            for a in ATTRIBUTES}
    every = np.mean([all(f[a] == c[a] for a in ATTRIBUTES)
                     for f, c in zip(found, combos, strict=True)])
    return {"n_images": len(combos), "accuracy": {k: float(v) for k, v in hits.items()},
            "all_correct": float(every)}


def _combos(split: str, prompts_per_combo: int) -> list[dict]:
    return [c for c in scenes.split(split) for _ in range(prompts_per_combo)]


def evaluate_renders(split: str = "heldout", jitter_seed: int | None = 0,
                     prompts_per_combo: int = 1, jitter: str = "small") -> dict:
    """The checker's accuracy on ground-truth renders (jittered as in training data).

    With ``prompts_per_combo`` >= 2, K renders per combination with their own jitter
    seeds, and their variety against the reference renders (spread ratio about 1).
    """
    combos = scenes.split(split)
    if prompts_per_combo < 2 or jitter_seed is None:
        rng = None if jitter_seed is None else np.random.default_rng(jitter_seed)
        return {"split": split, "source": "renders",
                **score([render(c, 64, rng, jitter) for c in combos], combos)}
    groups = variety.reference_renders(combos, prompts_per_combo, 64, jitter, seed=jitter_seed)
    return {"split": split, "source": f"renders ({jitter} jitter)",
            **score(np.concatenate(groups), _combos(split, prompts_per_combo)),
            "variety": _variety(groups, combos, jitter)}


def _variety(groups: list[np.ndarray], combos: list[dict], jitter: str) -> dict:
    size = groups[0].shape[1]
    reference = variety.reference_renders(combos, len(groups[0]), size, jitter)
    return {**variety.variety(groups, reference), "jitter": jitter}


def evaluate(model_path: str | ImageModel, prompts_per_combo: int = 1, split: str = "heldout",
             seed: int = 0, batch_size: int = 64, options: dict | None = None,
             jitter: str = "small") -> dict:
    """Generate ``prompts_per_combo`` images per combination of a split and score them.

    ``model_path`` is a gan/autoregressive model folder (or an already loaded
    :class:`ImageModel`); ``options`` go to ``GenerationParams.extra`` (e.g. AR sampling).
    With ``prompts_per_combo`` >= 2 the result also holds ``variety``: the K seeds of
    each prompt against renders with the ``jitter`` the model was trained on.
    """
    model = load_model_folder(model_path) if isinstance(model_path, str) else model_path
    width, height = model.native_size or (64, 64)
    params = GenerationParams(width=width, height=height, extra=dict(options or {}))
    combos = _combos(split, prompts_per_combo)
    captions = [caption(c) for c in combos]
    seeds = [derive_seed(seed, text, i % prompts_per_combo) for i, text in enumerate(captions)]
    images = []
    for start in range(0, len(combos), batch_size):
        chunk = slice(start, start + batch_size)
        images.extend(model.generate(model.encode_prompt(captions[chunk]), seeds[chunk], params))
    source = model_path if isinstance(model_path, str) else model.model_id
    result = {"split": split, "source": source, **score(images, combos)}
    if prompts_per_combo >= 2:
        groups = list(np.stack(images).reshape(-1, prompts_per_combo, *images[0].shape))
        result["variety"] = _variety(groups, scenes.split(split), jitter)
    return result


def format_table(results: dict | list[dict]) -> str:
    """A Markdown table: one row per result, one column per attribute, then variety."""
    rows = [results] if isinstance(results, dict) else results
    head = ["source", "split", "n", *ATTRIBUTES, "all", "identical pairs", "alike prompts",
            "spread x / y / side"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["source"]), r["split"], str(r["n_images"]),
                 *(f"{r['accuracy'][a]:.3f}" for a in ATTRIBUTES), f"{r['all_correct']:.3f}",
                 *variety.format_cells(r.get("variety"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line: print the fidelity table of one model folder."""
    import yaml

    # ``--grammar cartoon`` hands the rest to the cartoon evaluation (its own options)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--grammar", choices=GRAMMARS, default="scenes")
    known, rest = pre.parse_known_args(argv)
    if known.grammar == "cartoon":
        from models.cartoon_eval import main as cartoon_main

        return cartoon_main(rest)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grammar", choices=GRAMMARS, default="scenes",
                        help="scenes (shapes) or cartoon (characters, EN+ZH; see "
                             "models.cartoon_eval for its options)")
    parser.add_argument("model", nargs="?", help="model folder (omit with --renders)")
    parser.add_argument("--per-combo", type=int, default=1)
    parser.add_argument("--split", default="heldout", choices=["heldout", "train"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--renders", action="store_true", help="score ground-truth renders too")
    parser.add_argument("--jitter", default="small", choices=scenes.JITTERS,
                        help="jitter of the training renders that variety is measured against")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="generation option, e.g. guidance_scale=3 (autoregressive)")
    args = parser.parse_args(argv)
    options = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in args.option)}
    results = ([evaluate_renders(args.split, prompts_per_combo=args.per_combo,
                                 jitter=args.jitter)] if args.renders else [])
    if args.model:
        results.append(evaluate(args.model, args.per_combo, args.split, args.seed,
                                options=options, jitter=args.jitter))
    print(format_table(results))


if __name__ == "__main__":
    main()
