"""``scene``: prompt fidelity of scene-grammar prompts, read back by the analytic checker.

A prompt ``a {size} {colour} {shape} {position} on a {background} background`` fixes five
attributes; ``models.scenes.analyse`` reads them back from the image. ``scene_match`` is
the fraction that agree, ``scene_failed`` names the others; both are null for any other
prompt.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from models import scenes
from pipeline.stages.scorers.base import Scorer


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_GRAMMAR = re.compile(
    rf"an? (?P<size>{_alternatives(scenes.SIZES)}) (?P<colour>{_alternatives(scenes.COLOURS)}) "
    rf"(?P<shape>{_alternatives(scenes.SHAPES)}) (?P<position>{_alternatives(scenes.POSITIONS)})"
    rf" on an? (?P<background>{_alternatives(scenes.COLOURS)}) background\.?", re.IGNORECASE)


def parse_scene(prompt: str | None) -> dict | None:
    """The five attributes of a scene-grammar prompt, or None for any other prompt."""
    found = _GRAMMAR.fullmatch(" ".join((prompt or "").split()))
    return {k: v.lower() for k, v in found.groupdict().items()} if found else None


class SceneScorer(Scorer):
    """Cheap: on the store threads (one 64² analysis is well under a millisecond)."""

    name = "scene"
    columns = {"scene_match": pa.float32(), "scene_failed": pa.list_(pa.string())}

    def score(self, pixels: np.ndarray, prompt: str) -> dict:
        wanted = parse_scene(prompt)
        if wanted is None:
            return {"scene_match": None, "scene_failed": None}
        seen = scenes.analyse(pixels)
        failed = [a for a in scenes.ATTRIBUTES if seen[a] != wanted[a]]
        return {"scene_match": 1 - len(failed) / len(scenes.ATTRIBUTES), "scene_failed": failed}
