"""Credentials out of every artifact and log line: by key name, and user:pass@ in URLs."""

from __future__ import annotations

import re
from typing import Any

_SECRET_KEY = re.compile(r"secret|token|password|passwd|credential|key$|^key|signature", re.I)
# user:password@ (a password may hold an unescaped "/") or user@
_URL_CREDENTIALS = re.compile(r"(?<=://)(?:[^/@\s:]+:[^@\s]+|[^/@\s]+)@")


def redact(value: Any, key: str = "") -> Any:
    """Replace credential-looking values (by key name, or user:pass@ in URLs) with '***'."""
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if key and _SECRET_KEY.search(key) and value not in (None, ""):
        return "***"
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub("***@", value)
    return value
