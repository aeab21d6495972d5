"""The one fsspec folder every byte goes through: atomic writes, markers, one retry policy.

Retries have one owner per path. Output: ``OutputFolder.call`` retries transient errors
with capped exponential backoff and jitter, so botocore is set to a single attempt and
s3fs's own loop is disabled (``fs.retries = 1``: its loop runs ``range(retries)``).
Input: reads happen inside pyarrow, out of reach of ``call``, so there botocore's
"standard" mode owns retries (same count) and s3fs's loop is disabled the same way.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import posixpath
import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from typing import IO, Any, TypeVar

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from pipeline.output.storage_errors import StorageError, describe, is_transient, not_implemented
from pipeline.redact import redact

log = logging.getLogger("synthset")
T = TypeVar("T")

ONE_PUT_MAX_BYTES = 64 * 2**20  # larger streams go up as a multipart upload


def _is_s3(url: str) -> bool:
    return url.startswith(("s3://", "s3a://"))


def _with_botocore_retries(url: str, options: dict[str, Any], attempts: int,
                           force: bool) -> dict[str, Any]:
    if not _is_s3(url):
        return dict(options)
    config = dict(options.get("config_kwargs") or {})  # copied: never mutate the spec's dict
    wanted = {"mode": "standard", "total_max_attempts": attempts}
    config["retries"] = wanted if force else config.get("retries", wanted)
    return {**options, "config_kwargs": config}


def _disable_fs_retries(fs: Any) -> None:
    if hasattr(fs, "retries"):
        fs.retries = 1  # s3fs: an instance attribute (the constructor rejects it)


class OutputFolder:
    """A folder on any fsspec URL with the writes a commit protocol needs."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None,
                 retries: int = 5, backoff_s: float = 0.5, max_backoff_s: float = 20.0):
        self.url = url.rstrip("/")
        options = _with_botocore_retries(url, storage_options or {}, 1, force=True)
        self.fs, self.root = url_to_fs(self.url, **options)
        _disable_fs_retries(self.fs)
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self._retries_spent = 0
        self._lock = threading.Lock()  # uploads run on a thread pool
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.conditional_writes = True  # until the endpoint says otherwise (501)

    def scoped(self) -> OutputFolder:
        """The same folder and filesystem with its own retry count (one per shard)."""
        twin = copy.copy(self)
        twin._retries_spent, twin._lock = 0, threading.Lock()
        return twin

    @property
    def retry_count(self) -> int:
        """Retries spent since the last reset (a shard's stats)."""
        return self._retries_spent

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name) if name else self.root

    def display(self, name: str = "") -> str:
        return redact(f"{self.url}/{name}" if name else self.url)

    def call(self, what: str, name: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries on transient errors; permanent ones fail fast."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except Exception as e:
                if not is_transient(e):
                    raise StorageError(f"{what} {self.display(name)} failed (permanent error, "
                                       f"not retried): {describe(e)}") from e
                if attempt == self.retries:
                    raise StorageError(f"{what} {self.display(name)} failed after "
                                       f"{attempt + 1} attempts: {describe(e)}") from e
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt)
                delay *= random.uniform(0.5, 1.0)  # jitter: don't hit the bucket all at once
                with self._lock:
                    self._retries_spent += 1
                log.warning("retrying %s %s in %.2fs (%s)", what, self.display(name), delay,
                            describe(e))
                time.sleep(delay)
        raise AssertionError("unreachable")

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` so that it is either absent or complete, never partial."""
        self.call("writing", name, lambda: self._put(self.path(name), data))

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(name, json_bytes(obj))

    def write_file(self, name: str, src: IO[bytes]) -> None:
        """Upload a seekable file object (a spooled shard) under ``name``, all or nothing."""
        self.call("writing", name, lambda: self._put_stream(self.path(name), src))

    def create_bytes(self, name: str, data: bytes) -> bytes | None:
        """Create ``name`` only if absent (If-None-Match: *). Returns None when this call
        created it, else the content already there: when a response was lost and the PUT
        retried, that content is our own write, so callers compare rather than assume."""
        def create() -> bytes | None:
            try:
                self._put(self.path(name), data, exclusive=True)
                return None
            except FileExistsError:
                return self.fs.cat_file(self.path(name))
        return self.call("creating", name, create)

    def create_or_fail(self, name: str, data: bytes) -> None:
        """Create ``name`` only if absent, else raise StorageError caused by FileExistsError
        (the run lock's form of :meth:`create_bytes`)."""
        self.call("creating", name, lambda: self._put(self.path(name), data, exclusive=True))

    def delete(self, name: str) -> None:
        """Delete ``name``; an object already gone is fine."""
        def rm() -> None:
            try:
                self.fs.rm_file(self.path(name))
            except FileNotFoundError:
                pass
        self.call("deleting", name, rm)

    def _put(self, path: str, data: bytes, exclusive: bool = False) -> None:
        if self.is_local:
            self._put_local(path, lambda f: f.write(data), exclusive)
        elif exclusive:
            self._put_exclusive(path, data)
        else:
            # One PUT (or a completed multipart upload): the object appears whole or not at all.
            self.fs.pipe_file(path, data)

    def _put_exclusive(self, path: str, data: bytes) -> None:
        """A conditional PUT (``If-None-Match: *``); an endpoint that does not implement it
        (older S3-compatible stores answer 501) gets check-then-put, which is exclusive
        except against a writer racing within the same instant."""
        if not self.conditional_writes:
            if self.fs.exists(path):
                raise FileExistsError(path)
            self.fs.pipe_file(path, data)
            return
        try:
            self.fs.pipe_file(path, data, mode="create")
        except Exception as e:
            if not not_implemented(e):
                raise
            log.warning("%s does not support conditional writes (If-None-Match); markers and "
                        "locks fall back to check-then-put", self.display())
            self.conditional_writes = False
            self._put_exclusive(path, data)

    def _put_stream(self, path: str, src: IO[bytes]) -> None:
        size = src.seek(0, os.SEEK_END)
        src.seek(0)
        if self.is_local:
            self._put_local(path, lambda f: shutil.copyfileobj(src, f, 2**20), False)
        elif size <= ONE_PUT_MAX_BYTES:
            self.fs.pipe_file(path, src.read())
        else:
            self._put_multipart(path, src)

    def _put_multipart(self, path: str, src: IO[bytes]) -> None:
        # autocommit=False: parts upload as we go, the object appears only on commit();
        # `with fs.open(..., "wb")` would commit a partial object if the copy raised.
        f = self.fs.open(path, "wb", autocommit=False)
        try:
            shutil.copyfileobj(src, f, 8 * 2**20)
            f.close()
            f.commit()
        except BaseException:
            try:
                f.discard()
            except Exception as e:  # the bucket's lifecycle rule cleans up what is left
                log.warning("could not abort the upload of %s: %s", path, describe(e))
            raise

    @staticmethod
    def _put_local(path: str, fill: Callable[[IO[bytes]], Any], exclusive: bool) -> None:
        # The temp file sits next to the target, so the final rename never crosses
        # filesystems (a rename from /tmp would be a copy: a reader could see a partial file).
        folder, base = os.path.split(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(tmp, "wb") as f:
                fill(f)
            _local_commit(tmp, path, exclusive)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

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

    def open(self, name: str) -> IO[bytes]:
        """A binary reader for ``name`` (callers retry the whole read with ``call``)."""
        self.fs.invalidate_cache(self.path(name))  # s3fs would check a stale cached ETag
        return self.fs.open(self.path(name), "rb")

    def exists(self, name: str) -> bool:
        return self.call("checking", name, lambda: self.fs.exists(self.path(name)))

    def list(self, prefix: str = "") -> list[str]:
        """Names (relative to the folder) of the files directly under it, starting with
        ``prefix``: on object stores the prefix goes to the server, so finding the run's
        lock objects among 300,000 others is one request, not 300 pages."""
        def ls() -> list[str]:
            self.fs.invalidate_cache(self.root)
            try:
                if self.is_local:  # fsspec's ls cleans each of 300,000 names: 10x slower
                    return os.listdir(self.root)
                if prefix:
                    entries = self.fs.glob(self.path(prefix) + "*")
                    return [self._relative(e) for e in entries]
                entries = self.fs.ls(self.root, detail=False)
            except FileNotFoundError:
                return []
            return [self._relative(e) for e in entries]
        return sorted(n for n in self.call("listing", "", ls) if n.startswith(prefix))

    def find(self) -> dict[str, int]:
        """Every object under the folder, recursively: relative name -> size in bytes."""
        def find() -> dict[str, int]:
            self.fs.invalidate_cache()  # s3fs keeps subfolder listings past a root invalidation
            try:
                found = self.fs.find(self.root, detail=True)
            except FileNotFoundError:
                return {}
            return {self._relative(p): int(i.get("size") or 0)
                    for p, i in found.items() if i.get("type", "file") == "file"}
        return self.call("listing", "", find)

    def _relative(self, path: str) -> str:
        # a prefix cut, not posixpath.relpath: that cost 9 of the 11 s status took to list
        # a 100,000-shard output (300,000 names)
        prefix = self.root.rstrip("/") + "/"
        return path[len(prefix):] if path.startswith(prefix) else posixpath.relpath(path,
                                                                                     self.root)

    def delete_all(self) -> None:
        """Remove the folder and everything under it (``--overwrite``)."""
        def rm() -> None:
            if self.fs.exists(self.root):
                self.fs.rm(self.root, recursive=True)
        self.call("deleting", "", rm)


def _local_commit(tmp: str, path: str, exclusive: bool) -> None:
    if not exclusive:
        os.replace(tmp, path)  # atomic on POSIX
        return
    try:
        os.link(tmp, path)  # atomic, and fails with FileExistsError if path exists
    except OSError as e:
        if isinstance(e, FileExistsError):
            raise
        # no hard links on this filesystem: exclusive, but a reader may see it half-written
        with open(path, "xb") as f, open(tmp, "rb") as src:
            shutil.copyfileobj(src, f)


def json_bytes(obj: Any) -> bytes:
    """The stable JSON encoding used for markers and manifests."""
    return json.dumps(obj, indent=1, sort_keys=True, default=str).encode()


def open_input_fs(url: str, storage_options: dict[str, Any],
                  retries: int = 5) -> tuple[Any, str]:
    """The filesystem and path for an input URL, with one retry layer (botocore's)."""
    options = _with_botocore_retries(url, storage_options, retries + 1, force=False)
    fs, path = url_to_fs(url, **options)
    _disable_fs_retries(fs)
    return fs, path
