"""The one fsspec folder every byte goes through: atomic writes, markers, one retry policy.

Retries have one owner: this module. For S3 the botocore layer is set to a single
attempt and s3fs's own loop is disabled, so a storage call is tried exactly
``retries + 1`` times with capped exponential backoff and jitter.
"""

from __future__ import annotations

import errno
import json
import logging
import posixpath
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fsspec.core import url_to_fs

log = logging.getLogger("synthset")
T = TypeVar("T")

_TRANSIENT_CODES = {"500", "502", "503", "504", "429", "SlowDown", "InternalError",
                    "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed", "Throttling"}
_TRANSIENT_NAMES = ("ConnectionClosedError", "EndpointConnectionError", "ReadTimeoutError",
                    "ConnectTimeoutError", "ConnectionError", "ResponseStreamingError",
                    "ServerDisconnectedError", "ClientOSError", "IncompleteRead",
                    "ProtocolError", "TimeoutError", "ClientPayloadError")


class StorageError(RuntimeError):
    """A storage call that failed for good; the message names the URL, never a secret."""


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: 5xx, 429, SlowDown, resets and timeouts."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (FileNotFoundError, PermissionError, FileExistsError)):
            return False
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if type(exc).__name__ in _TRANSIENT_NAMES:
            return True
        code = _error_code(exc)
        if code in _TRANSIENT_CODES:
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.ETIMEDOUT,
                                                      errno.EPIPE, errno.EIO):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {})
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(err.get("Code") or status or "")
    text = str(exc)
    for code in _TRANSIENT_CODES:
        if code in text.split("(")[0] or f"({code})" in text or f"status {code}" in text:
            return code
    return ""


def _storage_options(url: str, options: dict[str, Any]) -> dict[str, Any]:
    options = dict(options)
    if url.startswith(("s3://", "s3a://")):
        options.setdefault("config_kwargs", {}).setdefault(
            "retries", {"mode": "standard", "total_max_attempts": 1})
    return options


class OutputFolder:
    """A folder on any fsspec URL with the writes a commit protocol needs."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None,
                 retries: int = 5, backoff_s: float = 0.5, max_backoff_s: float = 20.0):
        self.url = url.rstrip("/")
        self.fs, self.root = url_to_fs(self.url, **_storage_options(url, storage_options or {}))
        if hasattr(self.fs, "retries"):
            self.fs.retries = 1  # s3fs: an instance attribute; we own retries
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.retry_count = 0  # retries spent, for the shard's stats
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple)
                                   else (self.fs.protocol,))

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name) if name else self.root

    def display(self, name: str = "") -> str:
        return f"{self.url}/{name}" if name else self.url

    def call(self, what: str, name: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries on transient errors; permanent ones fail fast."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except Exception as e:
                if not is_transient(e) or attempt == self.retries:
                    raise StorageError(
                        f"{what} {self.display(name)} failed"
                        f"{f' after {attempt + 1} attempts' if attempt else ''}: "
                        f"{type(e).__name__}: {_first_line(e)}") from e
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
                self.retry_count += 1
                log.warning("retrying %s %s in %.2fs (%s)", what, self.display(name), delay,
                            _first_line(e))
                time.sleep(delay * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` so that it is either absent or complete, never partial."""
        self.call("writing", name, lambda: self._write_atomic(self.path(name), data))

    def _write_atomic(self, path: str, data: bytes) -> None:
        if not self.is_local:
            # One PUT (or a completed multipart upload): the object appears whole or not at all.
            self.fs.pipe_file(path, data)
            return
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        f = self.fs.open(path, "wb", autocommit=False)  # a temp file, renamed on commit
        try:
            f.write(data)
            f.close()
            f.commit()
        except BaseException:
            f.discard()
            raise

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(name, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())

    def read_bytes(self, name: str) -> bytes:
        return self.call("reading", name, lambda: self.fs.cat_file(self.path(name)))

    def read_json(self, name: str) -> Any | None:
        """The parsed JSON object at ``name``, or None if it does not exist."""
        try:
            return json.loads(self.read_bytes(name))
        except StorageError as e:
            if isinstance(e.__cause__, FileNotFoundError):
                return None
            raise

    def exists(self, name: str) -> bool:
        return self.call("checking", name, lambda: self.fs.exists(self.path(name)))

    def list(self, prefix: str = "") -> list[str]:
        """Names (relative to the folder) of the files directly under it."""
        def ls() -> list[str]:
            self.fs.invalidate_cache(self.root)
            try:
                entries = self.fs.ls(self.root, detail=False)
            except FileNotFoundError:
                return []
            return [posixpath.relpath(e, self.root) for e in entries]
        return sorted(n for n in self.call("listing", "", ls) if n.startswith(prefix))

    def delete_all(self) -> None:
        """Remove the folder and everything under it (``--overwrite``)."""
        def rm() -> None:
            if self.fs.exists(self.root):
                self.fs.rm(self.root, recursive=True)
        self.call("deleting", "", rm)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


def open_input_fs(url: str, storage_options: dict[str, Any]) -> tuple[Any, str]:
    """The filesystem and path for an input URL, with the same retry ownership."""
    return url_to_fs(url, **_storage_options(url, storage_options))
