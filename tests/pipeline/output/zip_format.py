"""A format defined outside synthset (one module, nothing else touched): ``SSSSS.zip`` with
the images, ``SSSSS.parquet`` with the rows, the marker last."""

from __future__ import annotations

import hashlib
import tempfile
import zipfile

import pyarrow as pa

from pipeline.output.formats.base import ShardCheck, parquet_bytes
from pipeline.output.formats.packed import PackedWriter


class ZipShardWriter(PackedWriter):
    format, container = "zip", "zip"
    description = "`SSSSS.zip` of images + `SSSSS.parquet`"

    def write_objects(self, table: pa.Table) -> None:
        with tempfile.TemporaryFile() as f:
            with zipfile.ZipFile(f, "w") as z:
                for key in sorted(self.spool.index):
                    info = zipfile.ZipInfo(f"{key}.{self.extension}", (1980, 1, 1, 0, 0, 0))
                    z.writestr(info, self.spool.get(key))
            self.upload(self.object_name, f)
        self.upload(f"{self.shard_name}.parquet", parquet_bytes(table))

    @classmethod
    def stored_images(cls, folder, shard_name, rows):
        with folder.open(f"{shard_name}.zip") as f, zipfile.ZipFile(f) as z:
            for name in z.namelist():
                yield name.partition(".")[0], z.read(name)

    @classmethod
    def check(cls, c: ShardCheck, images: dict[str, dict]) -> set[str]:
        found = {k: hashlib.sha256(d).hexdigest()
                 for k, d in cls.stored_images(c.folder, c.shard, [])}
        for key, row in images.items():
            if found.get(key) != row["sha256"]:
                c.problem(f"{c.shard}.zip: image of key {key} is missing or differs")
        return set()
