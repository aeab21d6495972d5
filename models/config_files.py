"""Typed YAML config files, one machinery for job specs and training configs: sections that
reject unknown keys, ``--set dotted.key=value`` overrides, and errors that name the field,
say what was received and point at the docs."""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class Section(BaseModel):
    """A config section: unknown keys and bad values are errors, also on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Paths, ids and template text stay strings even when YAML would read them otherwise.
STRING_KEYS = ("path", "encoder", "name", "text", "init_from", "out_dir", "export_dir",
               "family", "format", "factory")


def apply_override(raw: dict[str, Any], assignment: str,
                   error: type[Exception] = ValueError) -> None:
    """Apply one ``dotted.key=value`` (value parsed as YAML) to a raw config dict."""
    if "=" not in assignment:
        raise error(f"--set {assignment!r}: expected dotted.key=value")
    dotted, text = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise error(f"--set {dotted}: {part!r} is not a section")
        node = child
    if parts[-1] in STRING_KEYS or parts[-1].endswith("_column"):
        node[parts[-1]] = text
        return
    try:
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise error(f"--set {dotted}: {text!r} is not a YAML value ({e})") from None


def one_of(names: list[str]) -> str:
    """``'a', 'b' or 'c'``."""
    quoted = [repr(n) for n in names]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else quoted[0]


def _field_hint(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    model: Any = root
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return ""
        field = fields[part]
        model = field.annotation
    return f" ({field.description})" if field is not None and field.description else ""


_FIELD_PREFIX = re.compile(r"^Value error, (\w+): (.*)$", re.S)
_CHOICE_ERRORS = ("literal_error", "enum")


def _value_error(loc: tuple[Any, ...], msg: str) -> tuple[tuple[Any, ...], str]:
    """A cross-field check says ``field: why``; move ``field`` into the dotted path."""
    match = _FIELD_PREFIX.match(msg)
    if not match:
        return loc, msg.removeprefix("Value error, ")
    return (*loc, match.group(1)), match.group(2)


def describe(error: ValidationError, root: type[BaseModel], title: str, doc: str) -> str:
    """One line per bad field: ``dotted.path: what is wrong (what the field is)``."""
    problems: dict[str, list[str]] = {}
    for e in error.errors():
        # Union members add their type name to the location; the field path is what matters.
        loc = tuple(p for p in e["loc"] if not str(p).startswith(("int", "literal")))
        msg = e["msg"]
        if e["type"] == "value_error":
            loc, msg = _value_error(loc, msg)
        if e["type"] == "extra_forbidden":
            msg = f"unknown key; check its spelling against {doc}"
        elif e["type"] == "missing":
            msg = "required"
        elif e["type"] in _CHOICE_ERRORS:
            msg = f"{msg}; got {e['input']!r}"
        key = ".".join(str(p) for p in loc)
        problems.setdefault(key, [_field_hint(root, loc)]).append(msg)
    lines = [f"  {k}: {' or '.join(dict.fromkeys(m[1:]))}{m[0]}" for k, m in problems.items()]
    return f"invalid {title}:\n" + "\n".join(lines)
