"""The ``input.template`` section: a prompt template, its slots, sampling and constraints.

Validation only; pipeline.input.templates turns a TemplateSpec into rows.
"""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TemplateSpec(_Section):
    """Prompts from a template: every ``{slot}`` in ``text`` is filled from its slot's values."""

    text: str = Field(description="e.g. 'a photo of a {color} {object}'")
    slots: dict[str, list[str] | dict[str, float]] = Field(
        description="slot -> list of values, or value -> weight (mode: sample)")
    mode: Literal["cartesian", "sample"] = Field(
        "cartesian", description="cartesian: every combination once; sample: count seeded draws")
    count: int | None = Field(None, ge=1, le=10**10, description="prompts to draw (mode: sample)")
    seed: int = Field(0, ge=0, description="seed of the sampling (mode: sample)")
    dedupe: bool = Field(True, description="never draw one combination twice (mode: sample)")
    distinct: list[list[str]] = Field(
        default_factory=list, description="groups of slots that never share a value")
    exclude: list[dict[str, str | list[str]]] = Field(
        default_factory=list, description="combinations never generated, e.g. {shape: circle}")
    say: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="slot -> {value: the words the prompt uses for it}; "
        "the label column keeps the value. Words may name other slots: ', {eyes} eyes'")

    @field_validator("slots", mode="before")
    @classmethod
    def _stringify(cls, slots: Any) -> Any:
        # YAML reads `[1, 2]` or `{yes: 2}` as numbers and booleans; slot values are text.
        if not isinstance(slots, dict):
            return slots
        return {str(k): ({str(v): w for v, w in vals.items()} if isinstance(vals, dict)
                         else [str(v) for v in vals] if isinstance(vals, list) else vals)
                for k, vals in slots.items()}

    @field_validator("slots")
    @classmethod
    def _check_slots(cls, slots: dict) -> dict:
        for name, values in slots.items():
            if not values:
                raise ValueError(f"{name}: needs at least one value")
            if isinstance(values, list) and len(set(values)) < len(values):
                raise ValueError(f"{name}: repeats a value; use {{value: weight}} to weight it")
            if isinstance(values, dict) and min(values.values()) <= 0:
                raise ValueError(f"{name}: weights must be positive")
        return slots

    @model_validator(mode="after")
    def _check(self) -> TemplateSpec:
        fields = self._fields()
        missing = [f for f in fields if f not in self.slots]
        unused = [s for s in self.slots if s not in fields]
        if missing or unused:
            raise ValueError(f"slots: text uses {fields or 'no slots'}; missing {missing}, "
                             f"unused {unused}")
        if self.mode == "sample" and self.count is None:
            raise ValueError("count: required when mode is 'sample'")
        if self.mode == "cartesian" and self.count is not None:
            raise ValueError("count: cartesian yields every combination; for a subset use "
                             "mode: sample (with dedupe: true, a shuffled cartesian)")
        weighted = [k for k, v in self.slots.items() if isinstance(v, dict)]
        if self.mode == "cartesian" and weighted:
            raise ValueError(f"slots: weights ({', '.join(weighted)}) need mode: sample")
        self._check_constraints()
        return self

    def _fields(self) -> list[str]:
        """Slots the text uses, directly or through the words ``say`` gives a value."""
        fields = template_fields(self.text)
        for slot, words in self.say.items():
            if slot not in self.slots:
                raise ValueError(f"say: {slot!r} is not a slot")
            for value, text in words.items():
                if value not in self.slots[slot]:
                    raise ValueError(f"say: {value!r} is not a value of slot {slot!r}")
                nested = template_fields(text)
                if any(template_fields(w) for n in nested for w in self.say.get(n, {}).values()) \
                        or slot in nested:
                    raise ValueError(f"say.{slot}: {text!r} may name other slots whose own "
                                     "words name none (one level)")
                fields += nested
        return list(dict.fromkeys(fields))

    def _check_constraints(self) -> None:
        for group in self.distinct:
            unknown = [s for s in group if s not in self.slots]
            if unknown or len(group) < 2:
                raise ValueError(f"distinct: {group} must name two or more of {list(self.slots)}")
        for rule in self.exclude:
            for slot, values in rule.items():
                if slot not in self.slots:
                    raise ValueError(f"exclude: {slot!r} is not a slot")
                for v in [values] if isinstance(values, str) else values:
                    if v not in self.slots[slot]:
                        raise ValueError(f"exclude: {v!r} is not a value of slot {slot!r}")


def template_fields(text: str) -> list[str]:
    """The slot names a template uses, in order of first appearance."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(f"text: {e} (write literal braces as {{{{ and }}}})") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"text: {{{name}}} must be a plain {{slot_name}}")
        names.append(name)
    return list(dict.fromkeys(names))
