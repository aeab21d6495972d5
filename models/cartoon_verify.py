"""Read a cartoon character's eight attributes back from an image, with no weights.

The face is the largest skin-coloured blob; its moments give the face shape
(elongation for oval, fill of the enclosing circle for square) and a frame
(centre, width, height) in which every other part sits at a known place: eyes
and glasses, the mouth (its curvature is the expression), the hair above and
beside the face, the hat above it. Colours are read by voting over the pixels of
each part with that part's own palette, so a blue eye never counts as blue hair.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from models.cartoon import (
    ATTRIBUTES,
    BACKGROUND,
    EYE_R,
    EYE_X,
    EYE_Y,
    EYES,
    GLASSES,
    HAIR,
    HAT,
    MOUTH,
    MOUTH_Y,
    SKIN,
)


def _rgb(table: dict) -> np.ndarray:
    return np.array(list(table.values()), dtype=np.float32)


def _nearest(pixels: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of and distance to the nearest palette colour, (..., 3) -> (...), (...)."""
    d = np.sqrt(((pixels[..., None, :] - palette) ** 2).sum(-1))
    return d.argmin(-1), d.min(-1)


class _Frame:
    """The face's centre, width and height in pixels, and pixel coordinates around it."""

    def __init__(self, mask: np.ndarray):
        ys, xs = np.nonzero(mask)
        self.cx, self.cy = xs.mean() + 0.5, ys.mean() + 0.5
        cov = np.cov(np.stack([xs, ys]).astype(np.float64)) + 1 / 12  # pixel-area variance
        small, large = np.linalg.eigvalsh(cov)
        self.elongation = float(np.sqrt(large / small))
        r = np.sqrt((xs + 0.5 - self.cx) ** 2 + (ys + 0.5 - self.cy) ** 2).max() + 0.5
        self.circle_fill = float(mask.sum() / (np.pi * r * r))
        self.variances = small, large
        self.w = self.h = 0.0  # set by scale_for once the shape is known
        self.yy, self.xx = np.mgrid[:mask.shape[0], :mask.shape[1]] + 0.5

    def scale_for(self, shape: str) -> None:
        """Width and height from the variances: a^2/4 for an ellipse's semi-axis a, s^2/12
        for a square's side s (x1.03: its rounded corners trim the variance)."""
        small, large = self.variances
        k = 4 if shape != "square" else np.sqrt(12) * 1.03
        self.w, self.h = k * np.sqrt(small), k * np.sqrt(large)

    def region(self, x0: float, x1: float, y0: float, y1: float,
               mirror: bool = False) -> np.ndarray:
        """Pixels in a box given in face units (x in widths, y in heights from the centre)."""
        dx = (self.xx - self.cx) / self.w
        dx = np.abs(dx) if mirror else dx
        dy = (self.yy - self.cy) / self.h
        return (dx >= x0) & (dx <= x1) & (dy >= y0) & (dy <= y1)

    def disc(self, x: float, y: float, r0: float, r1: float) -> np.ndarray:
        """Pixels within a ring r0..r1 (face widths) around a face-unit point."""
        d = np.hypot(self.xx - (self.cx + x * self.w), self.yy - (self.cy + y * self.h))
        return (d >= r0 * self.w) & (d <= r1 * self.w)


def analyse(image: np.ndarray) -> dict:
    """The eight attributes of a uint8 (H, W, 3) character image; unreadable ones are None."""
    pixels = image.astype(np.float32)
    result = dict.fromkeys(ATTRIBUTES)
    result["background"] = _background(pixels)
    face = _face_mask(pixels)
    if face is None:
        return result
    frame, skin = _Frame(face), _skin(pixels, face)
    result["face"] = _face_shape(frame)
    frame.scale_for(result["face"])
    result.update( skin=list(SKIN)[skin], eyes=_eyes(pixels, frame, skin),
                  expression=_expression(pixels, frame, face, skin),
                  accessory=_accessory(pixels, frame, skin))
    result.update(_hair(pixels, frame, face, result["background"]))
    return result


def _background(pixels: np.ndarray) -> str:
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    index, _ = _nearest(border, _rgb(BACKGROUND))
    return list(BACKGROUND)[int(np.bincount(index, minlength=len(BACKGROUND)).argmax())]


_ALL = np.concatenate([_rgb(SKIN), _rgb(HAIR), _rgb(EYES), _rgb(BACKGROUND),
                       np.array([HAT, GLASSES, MOUTH], np.float32)])


def _face_mask(pixels: np.ndarray) -> np.ndarray | None:
    """The face silhouette: the largest skin blob, each row filled between its ends."""
    index, dist = _nearest(pixels, _ALL)
    skin = _denoise((index < len(SKIN)) & (dist < 60))
    blob = _largest_component(skin)
    if blob.sum() < 12:
        return None
    filled = np.zeros_like(blob)
    for y in np.nonzero(blob.any(1))[0]:  # eyes, mouth and glasses leave holes: close them
        xs = np.nonzero(blob[y])[0]
        filled[y, xs.min():xs.max() + 1] = True
    return filled


def _denoise(mask: np.ndarray) -> np.ndarray:
    # keep pixels with at least 5 of their 3x3 neighbourhood set: drops blended edges
    padded = np.pad(mask, 1).astype(np.int8)
    h, w = mask.shape
    votes = sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
    return mask & (votes >= 5)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (a breadth-first fill)."""
    labels = np.zeros(mask.shape, np.int32)
    best, best_size, h, w = 0, 0, *mask.shape
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        label = int(labels.max()) + 1
        labels[start], queue, size = label, deque([start]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    queue.append((ny, nx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best else np.zeros_like(mask)


def _skin(pixels: np.ndarray, face: np.ndarray) -> int:
    index, _ = _nearest(pixels[face], _rgb(SKIN))
    return int(np.bincount(index, minlength=len(SKIN)).argmax())


def _face_shape(frame: _Frame) -> str:
    if frame.elongation > 1.12:  # oval faces are 1.25 times taller than wide
        return "oval"
    # a circle fills its enclosing circle; a rounded square about 0.75 of it
    return "round" if frame.circle_fill > 0.79 else "square"


def _vote(pixels: np.ndarray, where: np.ndarray, palette: np.ndarray,
          keep: np.ndarray) -> int | None:
    """Most common palette index among pixels at ``where`` whose index is in ``keep``."""
    index, _ = _nearest(pixels[where], palette)
    index = index[np.isin(index, keep)]
    return int(np.bincount(index).argmax()) if len(index) else None


def _eyes(pixels: np.ndarray, frame: _Frame, skin: int) -> str | None:
    where = (frame.disc(-EYE_X, EYE_Y, 0, 0.8 * EYE_R) | frame.disc(EYE_X, EYE_Y, 0, 0.8 * EYE_R))
    palette = np.concatenate([_rgb(EYES), _rgb(SKIN)[skin:skin + 1], [GLASSES]])
    found = _vote(pixels, where, palette, np.arange(len(EYES)))
    return None if found is None else list(EYES)[found]


def _accessory(pixels: np.ndarray, frame: _Frame, skin: int) -> str:
    above = frame.region(-0.5, 0.5, -1.3, -0.55)
    hat_index, hat_dist = _nearest(pixels[above], _ALL)
    hats = ((hat_index == len(_ALL) - 3) & (hat_dist < 70)).sum()
    if hats >= 0.05 * frame.w * frame.h:
        return "hat"
    rings = (frame.disc(-EYE_X, EYE_Y, 0.14, 0.2) | frame.disc(EYE_X, EYE_Y, 0.14, 0.2))
    palette = np.array([SKIN[list(SKIN)[skin]], GLASSES, *EYES.values()], np.float32)
    index, _ = _nearest(pixels[rings], palette)
    return "glasses" if _share(index == 1) > 0.05 else "none"


def _expression(pixels: np.ndarray, frame: _Frame, face: np.ndarray, skin: int) -> str | None:
    window = frame.region(-0.3, 0.3, MOUTH_Y - 0.13, MOUTH_Y + 0.18)
    # glasses' rims reach down towards the mouth: black pixels are not mouth pixels
    palette = np.array([SKIN[list(SKIN)[skin]], MOUTH, GLASSES], np.float32)
    index, _ = _nearest(pixels, palette)
    # inside the face (dark hair would pass as a mouth), away from the glasses' blended rims
    rims = frame.disc(-EYE_X, EYE_Y, 0, 0.24) | frame.disc(EYE_X, EYE_Y, 0, 0.24)
    mouth = window & face & ~rims & (index == 1)
    if mouth.sum() < 2:
        return None
    ys, xs = frame.yy[mouth], frame.xx[mouth]
    width, height = np.ptp(xs) + 1, np.ptp(ys) + 1
    if height > 0.6 * width and mouth.sum() > 0.5 * width * height:  # open and round
        return "surprised"
    # corners above the middle: a smile (a tilt adds a slope, not a bend)
    columns = np.unique(xs)
    heights = np.array([ys[xs == c].mean() for c in columns])  # mean mouth row per column
    third = max(1, len(columns) // 3)
    if len(columns) < 3:
        return "neutral"
    depth = heights[third:-third].mean() - np.r_[heights[:third], heights[-third:]].mean()
    return "smiling" if depth > 0.03 * frame.w else "neutral"


def _hair(pixels: np.ndarray, frame: _Frame, face: np.ndarray, background: str) -> dict:
    """Hair colour (vote around the face) and style (spikes above, panels beside the chin)."""
    palette = np.concatenate([_rgb(HAIR), [BACKGROUND[background], HAT], _rgb(SKIN)])
    index, dist = _nearest(pixels, palette)
    hair = (index < len(HAIR)) & (dist < 90) & ~_grow(face)
    around = frame.region(-0.8, 0.8, -1.0, 0.8) & hair
    if around.sum() < 4:
        return dict(hair_colour=None, hair_style=None)
    colour = int(np.bincount(index[around], minlength=len(HAIR)).argmax())
    panels = frame.region(0.55, 0.68, 0.2, 0.62, mirror=True)
    band = frame.region(-0.45, 0.45, -0.82, -0.72)
    style = ("long" if _share(hair[panels]) > 0.3 else
             "spiky" if _share(hair[band]) > 0.15 else "short")
    return dict(hair_colour=list(HAIR)[colour], hair_style=style)


def _share(values: np.ndarray) -> float:
    """The share of True in ``values``; 0 for none (a tiny face can leave a region empty)."""
    return float(values.mean()) if values.size else 0.0


def _grow(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
