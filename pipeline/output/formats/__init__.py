"""Output formats: one module each, one registry that everything else consults.

A format is a :class:`~pipeline.output.formats.base.ShardWriter` subclass that writes a
shard, reads its images back and verifies it. Spec validation, the worker, ``verify``,
``report``, the CLI and the docs' format table all look formats up here.

Adding a built-in format: a new module in this package and one entry in ``BUILT_IN``.
A format living outside synthset is named in the job as ``output.format:
"package.module:WriterClass"`` (importable on every node), or registered in-process
with :func:`register`.
"""

from __future__ import annotations

import importlib

from pipeline.output.formats.base import ShardWriter
from pipeline.output.formats.files import FilesShardWriter
from pipeline.output.formats.parquet import ParquetShardWriter
from pipeline.output.formats.webdataset import WebDatasetShardWriter
from pipeline.output.storage import OutputFolder

BUILT_IN = (FilesShardWriter, WebDatasetShardWriter, ParquetShardWriter)
FORMATS: dict[str, type[ShardWriter]] = {w.format: w for w in BUILT_IN}


def register(writer: type[ShardWriter], name: str | None = None) -> type[ShardWriter]:
    """Make ``writer`` available as ``output.format: NAME`` in this process (default NAME:
    ``writer.format``)."""
    if not (isinstance(writer, type) and issubclass(writer, ShardWriter)):
        raise ValueError(f"output.format {name or writer!r} is not a ShardWriter subclass")
    FORMATS[name or writer.format] = writer
    return writer


def format_names() -> list[str]:
    """The names a job may give: built in, or registered in this process by name."""
    return [n for n in FORMATS if ":" not in n]


def get_format(name: str) -> type[ShardWriter]:
    """The writer class of ``output.format`` (a registered name or ``module:Class``)."""
    if name in FORMATS:
        return FORMATS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            writer = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"output.format {name!r} cannot be imported: {e}") from None
        return register(writer, name)
    raise ValueError(f"output.format {name!r} is not one of {', '.join(format_names())} "
                     "(or a 'package.module:WriterClass' path)")


def make_writer(output_format: str, folder: OutputFolder, shard_name: str,
                extension: str, replace: bool = False) -> ShardWriter:
    """The writer for one shard (``replace``: reopen a committed shard)."""
    return get_format(output_format)(folder, shard_name, extension, replace)
