"""Procedural cartoon characters with bilingual captions: the founding design's example.

A character is eight attributes (face shape, skin tone, hair style and colour, eye
colour, expression, accessory, background). :func:`render` draws one at any size
with variation that no caption fixes (position, scale, a slight tilt); the
captions (:mod:`models.cartoon_text`) say the same attributes in English or
Chinese, or leave some open. :mod:`models.cartoon_verify` reads them back.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
from PIL import Image, ImageDraw

SKIN = {"light": (255, 222, 190), "tan": (222, 168, 118), "dark": (140, 90, 55)}
HAIR = {"black": (35, 30, 30), "blonde": (240, 205, 70), "red": (205, 45, 35),
        "blue": (45, 85, 215), "green": (45, 160, 65)}
EYES = {"blue": (60, 120, 240), "green": (40, 170, 80), "brown": (100, 50, 10)}
BACKGROUND = {"white": (245, 245, 245), "purple": (185, 150, 230),
              "light blue": (150, 210, 245), "light green": (175, 230, 160)}
HAT = (150, 30, 120)  # one hat colour: the caption never names it
GLASSES = (20, 20, 20)
MOUTH = (90, 15, 25)

VALUES = {
    "face": ["round", "oval", "square"],
    "skin": list(SKIN),
    "hair_style": ["short", "long", "spiky"],
    "hair_colour": list(HAIR),
    "eyes": list(EYES),
    "expression": ["smiling", "neutral", "surprised"],
    "accessory": ["none", "glasses", "hat"],
    "background": list(BACKGROUND),
}
ATTRIBUTES = list(VALUES)
ASPECT = {"round": 1.0, "oval": 1.25, "square": 1.0}  # face height / width
FACE_WIDTH = 0.34  # of the image side, before the scale jitter


def all_combinations() -> list[dict]:
    """Every attribute combination: 14,580 of them."""
    return [dict(zip(ATTRIBUTES, values, strict=True))
            for values in itertools.product(*VALUES.values())]


def key(attrs: dict) -> str:
    """A stable text key of one full combination."""
    return "|".join(attrs[a] for a in ATTRIBUTES)


def is_heldout(attrs: dict, fraction: float = 0.1) -> bool:
    """Whether a combination belongs to the held-out split (a stable hash of its key)."""
    return zlib.crc32(key(attrs).encode()) % 1000 < fraction * 1000


def split(name: str, fraction: float = 0.1) -> list[dict]:
    """``"train"`` or ``"heldout"`` combinations; held-out ones never appear in training."""
    if name not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {name!r}")
    return [a for a in all_combinations() if is_heldout(a, fraction) == (name == "heldout")]


def random_attrs(rng: np.random.Generator, combos: list[dict] | None = None) -> dict:
    """One combination drawn uniformly from ``combos`` (default: all of them)."""
    if combos is None:
        return {a: VALUES[a][int(rng.integers(len(VALUES[a])))] for a in ATTRIBUTES}
    return dict(combos[int(rng.integers(len(combos)))])


# the per-sample variation no caption fixes: (low, high) of scale, dx, dy (of the image
# side) and tilt (degrees), each drawn uniformly
JITTER = {"scale": (0.88, 1.04), "dx": (-.06, .06), "dy": (-.03, .03), "tilt": (-8.0, 8.0)}
NO_JITTER = (1.0, 0.0, 0.0, 0.0)


def draw_jitter(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(scale, dx, dy, tilt), each uniform in its JITTER range."""
    return tuple(float(rng.uniform(*JITTER[k])) for k in JITTER)


class _Layout:
    """Face centre (cx, cy), width w and height h in pixels of the big canvas."""

    def __init__(self, attrs: dict, big: int, jitter: tuple[float, float, float, float]):
        scale, dx, dy, self.tilt = jitter
        self.w = FACE_WIDTH * big * scale
        self.h = self.w * ASPECT[attrs["face"]]
        top, bottom = stack_extent(attrs)  # in face heights from the face centre
        self.cx = big * (0.5 + dx)
        self.cy = big * (0.5 + dy) - (top + bottom) / 2 * self.h

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        """A box given in face units (x in widths, y in heights, from the centre)."""
        return [self.cx + x0 * self.w, self.cy + y0 * self.h,
                self.cx + x1 * self.w, self.cy + y1 * self.h]


def stack_extent(attrs: dict) -> tuple[float, float]:
    """Top and bottom of the drawn character, in face heights from the face centre."""
    top = -0.5 - (0.4 if attrs["hair_style"] == "spiky" else 0.2)
    if attrs["accessory"] == "hat":
        top -= 0.25
    return top, 0.72 if attrs["hair_style"] == "long" else 0.5


def hat_bottom(attrs: dict) -> float:
    """Where the hat's brim sits (face heights from the centre): on top of the hair."""
    return -0.5 - (0.38 if attrs["hair_style"] == "spiky" else 0.18)


def render(attrs: dict, size: int = 64, rng: np.random.Generator | None = None,
           jitter: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Draw one character as uint8 (size, size, 3); ``rng`` adds position/scale/tilt jitter
    (or give it as ``jitter``: see :func:`draw_jitter`)."""
    big = size * 4  # draw big, then downsample: anti-aliased edges
    if jitter is None:
        jitter = draw_jitter(rng) if rng is not None else NO_JITTER
    lay = _Layout(attrs, big, jitter)
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    _hair(draw, lay, attrs)
    _face(draw, lay, attrs)
    _eyes_and_glasses(draw, lay, attrs)
    _mouth(draw, lay, attrs["expression"])
    if attrs["accessory"] == "hat":
        _hat(draw, lay, hat_bottom(attrs))
    if lay.tilt:
        layer = layer.rotate(lay.tilt, resample=Image.Resampling.BICUBIC,
                             center=(lay.cx, lay.cy))
    image = Image.new("RGBA", (big, big), BACKGROUND[attrs["background"]] + (255,))
    image.alpha_composite(layer)
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BOX))


def _hair(draw: ImageDraw.ImageDraw, lay: _Layout, attrs: dict) -> None:
    # hair lies behind the face: a cap showing above it and at the temples
    colour = HAIR[attrs["hair_colour"]]
    if attrs["hair_style"] == "long":  # side panels down past the chin
        for side in (-1, 1):
            x0, x1 = sorted((side * 0.4, side * 0.7))
            draw.rectangle(lay.box(x0, -0.3, x1, 0.72), fill=colour)
    draw.ellipse(lay.box(-0.7, -0.7, 0.7, 0.1), fill=colour)
    if attrs["hair_style"] == "spiky":
        for i in range(5):
            x = -0.4 + 0.2 * i
            draw.polygon([_pt(lay, x - 0.12, -0.55), _pt(lay, x, -0.9),
                          _pt(lay, x + 0.12, -0.55)], fill=colour)


def _pt(lay: _Layout, x: float, y: float) -> tuple[float, float]:
    return lay.cx + x * lay.w, lay.cy + y * lay.h


def _face(draw: ImageDraw.ImageDraw, lay: _Layout, attrs: dict) -> None:
    box, colour = lay.box(-0.5, -0.5, 0.5, 0.5), SKIN[attrs["skin"]]
    if attrs["face"] == "square":
        draw.rounded_rectangle(box, radius=0.15 * lay.w, fill=colour)
    else:
        draw.ellipse(box, fill=colour)


EYE_X, EYE_Y, EYE_R = 0.2, -0.06, 0.11  # eye centres (x in widths, y in heights), radius (w)
MOUTH_Y = 0.25  # mouth centre, face heights below the face centre


# generous boxes (face units, as _Layout.box) around every expression's mouth, the face
# outline and the hair's cap above the face (spikes included), anti-aliased edges
# included: where a training loss can look harder
PART_BOXES = {"mouth": (-0.27, MOUTH_Y - 0.17, 0.27, MOUTH_Y + 0.21),
              "face": (-0.56, -0.56, 0.56, 0.56),
              "hair": (-0.74, -0.94, 0.74, -0.42)}
DEFAULT_PARTS = ("mouth", "face")  # what ``cartoon_data --boxes`` writes unless told


def part_boxes(attrs: dict, jitter: tuple[float, float, float, float] = NO_JITTER,
               parts: tuple[str, ...] = tuple(PART_BOXES)) -> dict:
    """Where :func:`render` puts each of ``parts`` (names in PART_BOXES), as (x0, y0, x1, y1)
    fractions of the image side: the bounds of the box's corners after the tilt (any size)."""
    lay = _Layout(attrs, 1, jitter)
    theta = np.radians(lay.tilt)  # PIL rotates counter-clockwise on screen (y points down)
    cos, sin = np.cos(theta), np.sin(theta)
    boxes = {}
    for name in parts:
        x0, y0, x1, y1 = PART_BOXES[name]
        corners = np.array([(x, y) for x in (x0, x1) for y in (y0, y1)]) * (lay.w, lay.h)
        xs = lay.cx + corners[:, 0] * cos + corners[:, 1] * sin
        ys = lay.cy - corners[:, 0] * sin + corners[:, 1] * cos
        boxes[name] = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    return boxes


def _eyes_and_glasses(draw: ImageDraw.ImageDraw, lay: _Layout, attrs: dict) -> None:
    y, r = lay.cy + EYE_Y * lay.h, EYE_R * lay.w
    for side in (-1, 1):
        x = lay.cx + side * EYE_X * lay.w
        draw.ellipse([x - r, y - r, x + r, y + r], fill=EYES[attrs["eyes"]])
        if attrs["accessory"] == "glasses":
            rg = 0.17 * lay.w
            draw.ellipse([x - rg, y - rg, x + rg, y + rg], outline=GLASSES,
                         width=max(1, round(0.06 * lay.w)))
    if attrs["accessory"] == "glasses":  # the bridge
        draw.line([(lay.cx - 0.05 * lay.w, y), (lay.cx + 0.05 * lay.w, y)], fill=GLASSES,
                  width=max(1, round(0.06 * lay.w)))


def _mouth(draw: ImageDraw.ImageDraw, lay: _Layout, expression: str) -> None:
    x, y, w = lay.cx, lay.cy + MOUTH_Y * lay.h, lay.w
    width = max(1, round(0.08 * w))
    if expression == "smiling":  # the lower half of an ellipse: corners up
        draw.arc([x - 0.2 * w, y - 0.2 * w, x + 0.2 * w, y + 0.12 * w], 0, 180,
                 fill=MOUTH, width=width)
    elif expression == "neutral":
        draw.line([(x - 0.17 * w, y), (x + 0.17 * w, y)], fill=MOUTH, width=width)
    else:  # surprised: a round open mouth
        draw.ellipse([x - 0.09 * w, y - 0.12 * w, x + 0.09 * w, y + 0.12 * w], fill=MOUTH)


def _hat(draw: ImageDraw.ImageDraw, lay: _Layout, bottom: float) -> None:
    draw.rectangle(lay.box(-0.35, bottom - 0.27, 0.35, bottom), fill=HAT)  # crown
    draw.rectangle(lay.box(-0.6, bottom - 0.07, 0.6, bottom), fill=HAT)  # brim


