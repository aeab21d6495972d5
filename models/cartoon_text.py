"""Bilingual captions of cartoon characters from one fixed English/Chinese vocabulary.

A full caption names all eight attributes; a partial one names some (the rest
are open, ``None``); a free-form one names none ("卡通风格的人物", the founding
design's prompt). English and Chinese captions of the same attributes are built
from the same table, so a translation never drifts from its attributes.
"""

from __future__ import annotations

import numpy as np

from models.cartoon import ATTRIBUTES, VALUES

LANGUAGES = ("en", "zh")
FOUNDING_PROMPT = "卡通风格的人物"
FREE_FORM = {
    "en": ["a cartoon character", "a cartoon-style character", "cartoon character",
           "a character in cartoon style"],
    "zh": [FOUNDING_PROMPT, "一个卡通人物", "卡通人物", "卡通风格的角色"],
}
# English and Chinese words per attribute value; the templates below place them
WORDS = {
    "face": {"round": ("a round face", "圆脸"), "oval": ("an oval face", "椭圆脸"),
             "square": ("a square face", "方脸")},
    "skin": {"light": ("light skin", "浅色皮肤"), "tan": ("tan skin", "小麦色皮肤"),
             "dark": ("dark skin", "深色皮肤")},
    "hair_style": {"short": ("short", "短发"), "long": ("long", "长发"),
                   "spiky": ("spiky", "刺猬头")},
    "hair_colour": {"black": ("black", "黑色"), "blonde": ("blonde", "金色"),
                    "red": ("red", "红色"), "blue": ("blue", "蓝色"), "green": ("green", "绿色")},
    "eyes": {"blue": ("blue", "蓝色"), "green": ("green", "绿色"), "brown": ("brown", "棕色")},
    "expression": {"smiling": ("smiling", "微笑的"), "neutral": ("straight-faced", "面无表情的"),
                   "surprised": ("surprised", "惊讶的")},
    "accessory": {"none": ("no accessories", "没有配饰"), "glasses": ("glasses", "戴着眼镜"),
                  "hat": ("a hat", "戴着帽子")},
    "background": {"white": ("white", "白色"), "purple": ("purple", "紫色"),
                   "light blue": ("light blue", "浅蓝色"),
                   "light green": ("light green", "浅绿色")},
}
assert all(set(WORDS[a]) == set(VALUES[a]) for a in ATTRIBUTES)


def _word(attrs: dict, name: str, lang: str) -> str | None:
    value = attrs.get(name)
    return None if value is None else WORDS[name][value][LANGUAGES.index(lang)]


def _hair(attrs: dict, lang: str) -> str | None:
    style, colour = _word(attrs, "hair_style", lang), _word(attrs, "hair_colour", lang)
    if lang == "zh":
        if style is None:
            return None if colour is None else f"{colour}头发"
        return (colour or "") + style
    parts = [p for p in (style, colour) if p]
    return f"{' '.join(parts)} hair" if parts else None


def caption(attrs: dict, lang: str = "en") -> str:
    """The caption of ``attrs`` in ``lang``; attributes that are None (or absent) go unsaid.

    "a smiling cartoon character with a round face, light skin, long red hair, blue eyes
    and glasses on a white background" / "一个微笑的卡通人物，圆脸，浅色皮肤，红色长发，
    蓝色眼睛，戴着眼镜，白色背景".
    """
    if lang not in LANGUAGES:
        raise ValueError(f"lang must be one of {LANGUAGES}, got {lang!r}")
    return _caption_zh(attrs) if lang == "zh" else _caption_en(attrs)


def _caption_en(attrs: dict) -> str:
    eyes = _word(attrs, "eyes", "en")
    accessory = attrs.get("accessory")
    features = [_word(attrs, "face", "en"), _word(attrs, "skin", "en"), _hair(attrs, "en"),
                f"{eyes} eyes" if eyes else None,
                _word(attrs, "accessory", "en") if accessory not in (None, "none") else None]
    features = [f for f in features if f]
    expression = _word(attrs, "expression", "en")
    text = f"a {expression} cartoon character" if expression else "a cartoon character"
    if accessory == "none":
        text += " with no accessories" if not features else ""
    if features:
        head = ", ".join(features[:-1])
        text += " with " + (f"{head} and {features[-1]}" if head else features[-1])
    if accessory == "none" and features:
        text += ", no accessories"
    background = _word(attrs, "background", "en")
    return text + (f" on a {background} background" if background else "")


def _caption_zh(attrs: dict) -> str:
    eyes = _word(attrs, "eyes", "zh")
    parts = [_word(attrs, "face", "zh"), _word(attrs, "skin", "zh"), _hair(attrs, "zh"),
             f"{eyes}眼睛" if eyes else None, _word(attrs, "accessory", "zh")]
    background = _word(attrs, "background", "zh")
    parts.append(f"{background}背景" if background else None)
    expression = _word(attrs, "expression", "zh") or ""
    return "，".join([f"一个{expression}卡通人物", *(p for p in parts if p)])


def partial(attrs: dict, rng: np.random.Generator, max_named: int = 3) -> dict:
    """``attrs`` with all but 1..max_named attributes left open (None)."""
    n = int(rng.integers(1, max_named + 1))
    named = set(rng.choice(ATTRIBUTES, size=n, replace=False).tolist())
    return {a: (attrs[a] if a in named else None) for a in ATTRIBUTES}


def free_form(lang: str, rng: np.random.Generator) -> str:
    """A caption that fixes no attribute."""
    options = FREE_FORM[lang]
    return options[int(rng.integers(len(options)))]
