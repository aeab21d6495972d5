"""What the packed formats (WebDataset tars, Hugging Face image Parquet) share: the spool.

Images wait in a spooled temp file (memory up to a bound, then disk) until the shard
commits; the tar or Parquet is then built in one pass, in key order so its bytes do
not depend on thread timing, and uploaded once. A million-image job therefore issues
a few PUTs per shard instead of one per image.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading

import pyarrow as pa

from pipeline.output.formats.base import ShardWriter

SPOOL_MEMORY_BYTES = 64 * 2**20  # per shard; beyond this, images and tars spill to disk


class ImageSpool:
    """Encoded images of one shard, appended from many threads, read back by key."""

    def __init__(self) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)
        self.index: dict[str, tuple[int, int]] = {}  # key -> (offset, length)
        self.size = 0
        self._lock = threading.Lock()

    def add(self, key: str, data: bytes) -> None:
        with self._lock:
            offset = self.file.seek(0, 2)
            self.file.write(data)
            self.index[key] = (offset, len(data))
            self.size = offset + len(data)

    def get(self, key: str) -> bytes:
        with self._lock:
            offset, length = self.index[key]
            self.file.seek(offset)
            return self.file.read(length)

    def close(self) -> None:
        self.file.close()


class PackedWriter(ShardWriter):
    """A format whose images wait in a spool and go up in one object at commit."""

    container = ""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.spool = ImageSpool()

    @property
    def object_name(self) -> str:
        return f"{self.shard_name}.{self.container}"

    def put_image(self, key: str, data: bytes) -> str:
        """Keep one image for the shard's object (thread-safe); returns where it will live."""
        if self.committed is None:
            self.spool.add(key, data)
        return f"{self.object_name}/{key}.{self.extension}"

    def commit(self, table: pa.Table, stats: dict) -> dict:
        try:
            return super().commit(table, stats)
        finally:
            self.spool.close()

    def carry(self, images: dict[str, str]) -> None:
        """Read the committed images back from the shard's object into the spool, checking
        each against its row's sha256 so a damaged object is never carried forward."""
        if not images:
            return
        self.spool.close()
        self.spool = ImageSpool()  # a retried read starts over
        self.folder.call("reading", self.object_name, lambda: self._read_images(images))
        missing = sorted(set(images) - set(self.spool.index))
        if missing:
            raise ValueError(f"{self.folder.display(self.object_name)} lacks the committed "
                             f"images of keys {', '.join(missing[:5])}; run `synthset verify`")

    def _read_images(self, images: dict[str, str]) -> None:
        for key, data in type(self).stored_images(self.folder, self.shard_name, []):
            if key in images:
                if hashlib.sha256(data).hexdigest() != images[key]:
                    raise ValueError(f"{self.folder.display(self.object_name)}: the image of "
                                     f"key {key} does not match its row's sha256")
                self.spool.add(key, data)
