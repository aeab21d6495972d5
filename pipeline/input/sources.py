"""Parquet prompt sources: resolve a file/folder/glob, check schemas, stream by row group.

Only footers are read while planning; prompt text is read by the workers, one row
group at a time, so the driver's memory does not grow with the input.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import threading
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.output.storage import open_input_fs
from pipeline.spec import InputSpec

_GLOB_CHARS = "*?["


class InputError(ValueError):
    """Input that cannot be read as prompts; the message says which file and why."""


@dataclass(frozen=True)
class InputFile:
    """One Parquet file: its path, its name relative to the input root, row group sizes."""

    path: str
    name: str
    size: int
    row_groups: tuple[int, ...]

    @property
    def num_rows(self) -> int:
        return sum(self.row_groups)

    def identity(self) -> tuple[str, int, int]:
        """What the input signature covers for this file."""
        return self.name, self.size, self.num_rows

    def read(self, start: int, stop: int, storage_options: dict[str, Any]):
        """Rows [start, stop) as Arrow tables, one row group at a time."""
        return read_rows(self.path, start, stop, storage_options, self.row_groups, self.size)


@dataclass(frozen=True)
class InputSet:
    """The resolved input: files in a fixed order, and the schema they share."""

    url: str
    # InputFile, or any source with name, num_rows, identity() and read(start, stop, options)
    files: tuple
    schema: pa.Schema

    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.files)

    def signature(self) -> str:
        """Changes whenever the files, their sizes or row counts (or the template) change."""
        blob = json.dumps([f.identity() for f in self.files]).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def resolve_parquet(spec: InputSpec, storage_options: dict[str, Any]) -> InputSet:
    """List, open and check every input file; raise InputError with a clear reason."""
    fs, path = open_input_fs(spec.path, storage_options)
    paths, root = _list_files(fs, path, spec.path)
    files, schemas = [], []
    for p in paths:
        meta = _read_footer(fs, p)
        groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        name = posixpath.relpath(p, root) if root else posixpath.basename(p)
        files.append(InputFile(fs.unstrip_protocol(p), name, int(fs.size(p)), groups))
        schemas.append(meta.schema.to_arrow_schema().remove_metadata())
    schema = _common_schema(files, schemas)
    check_columns(schema, spec)
    return InputSet(spec.path, tuple(files), schema)


def _list_files(fs, path: str, url: str) -> tuple[list[str], str]:
    try:
        if any(c in path for c in _GLOB_CHARS):
            root = path[: min(path.index(c) for c in _GLOB_CHARS if c in path)]
            found = sorted(p for p in fs.glob(path) if fs.isfile(p))
            root = root.rsplit("/", 1)[0] if "/" in root else ""
        elif fs.isdir(path):
            root = path.rstrip("/")
            found = sorted(p for p in fs.find(path) if p.endswith((".parquet", ".pq")))
        elif fs.isfile(path):
            root, found = posixpath.dirname(path), [path]
        else:
            raise InputError(f"input.path {url}: no such file or folder")
    except PermissionError as e:
        raise InputError(f"input.path {url}: permission denied ({e})") from None
    if not found:
        raise InputError(f"input.path {url}: matched no Parquet files")
    return found, root


def _read_footer(fs, path: str) -> pq.FileMetaData:
    try:
        with fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata
    except PermissionError as e:
        raise InputError(f"cannot read {path}: permission denied ({e})") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path} is not a readable Parquet file: {e}") from None


def _common_schema(files: list[InputFile], schemas: list[pa.Schema]) -> pa.Schema:
    first = schemas[0]
    for f, s in zip(files, schemas):
        if not s.equals(first):
            diff = sorted(set(map(str, s)) ^ set(map(str, first)))
            raise InputError(
                f"{f.path} has a different schema from {files[0].path}; all input files "
                f"must share one schema. Differing fields: {', '.join(diff)}")
    return first


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def check_columns(schema: pa.Schema, spec: InputSpec) -> None:
    """The configured columns exist and have usable types."""
    available = ", ".join(schema.names)
    wanted = {"input.prompt_column": spec.prompt_column, "input.id_column": spec.id_column,
              "input.seed_column": spec.seed_column,
              "input.negative_prompt_column": spec.negative_prompt_column}
    for field, column in wanted.items():
        if column is not None and column not in schema.names:
            raise InputError(f"{field}: column {column!r} is not in the input; "
                             f"available columns: {available}")
    for field, column in (("input.prompt_column", spec.prompt_column),
                          ("input.negative_prompt_column", spec.negative_prompt_column)):
        if column is not None and not _is_string(schema.field(column).type):
            raise InputError(f"{field}: column {column!r} has type {schema.field(column).type}; "
                             "prompts must be strings (cast the column, e.g. in pyarrow)")
    if spec.seed_column and not pa.types.is_integer(schema.field(spec.seed_column).type):
        raise InputError(f"input.seed_column: column {spec.seed_column!r} has type "
                         f"{schema.field(spec.seed_column).type}; seeds must be integers")


def read_rows(path: str, start: int, stop: int, storage_options: dict[str, Any],
              row_groups: tuple[int, ...] | None = None, size: int | None = None):
    """Yield Arrow tables for rows [start, stop) of one file, one row group at a time.

    A row group with rows left after this span stays cached (one per process) until they
    are read: pandas and pyarrow write up to a million rows per group, and without the
    cache every 1000-row shard of such a file would download and decode the group again.
    """
    fs, _ = open_input_fs(path, storage_options)
    f = pf = None
    try:
        if row_groups is None:
            f = fs.open(path, "rb")
            pf = pq.ParquetFile(f)
            row_groups = tuple(pf.metadata.row_group(i).num_rows
                               for i in range(pf.metadata.num_row_groups))
        offset = 0
        for i, n in enumerate(row_groups):
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                key = (path, size, row_groups, i)
                table = _cached_group(key)
                if table is None:
                    if pf is None:
                        f = fs.open(path, "rb")
                        pf = pq.ParquetFile(f)
                    table = pf.read_row_group(i)
                    if table.num_rows != n:
                        raise InputError(f"{path}: row group {i} holds {table.num_rows} rows, "
                                         f"not the {n} planned; the file changed during the job")
                # kept while later rows of the group remain to be read, dropped after
                _remember_group(key, table if hi < offset + n else None)
                yield table.slice(lo - offset, hi - lo)
            offset += n
            if offset >= stop:
                break
    finally:
        if f is not None:
            f.close()


_last_group: list = [None, None]  # [key, table]: a row group with rows still to read
_last_group_lock = threading.Lock()


def _cached_group(key: tuple) -> pa.Table | None:
    with _last_group_lock:
        return _last_group[1] if _last_group[0] == key else None


def _remember_group(key: tuple, table: pa.Table | None) -> None:
    with _last_group_lock:
        _last_group[:] = [key, table] if table is not None else [None, None]
