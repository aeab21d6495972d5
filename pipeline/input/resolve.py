"""The job's input, whichever source it comes from: Parquet files or a template."""

from __future__ import annotations

from typing import Any

from pipeline.input.sources import InputSet, resolve_parquet
from pipeline.input.templates import resolve_template
from pipeline.spec import InputSpec


def resolve_input(spec: InputSpec, storage_options: dict[str, Any]) -> InputSet:
    """The input set of ``input``: footers or template counts only, no prompt text."""
    if spec.template is not None:
        return resolve_template(spec)
    return resolve_parquet(spec, storage_options)
