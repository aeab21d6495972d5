"""JobSpec: the typed job file, ``--set`` overrides, fingerprint and a secret-free dump."""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.template_spec import TemplateSpec


class SpecError(ValueError):
    """A job spec that cannot run; the message names the field and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_NO_SOURCE = "\0 no input source"


class InputSpec(_Section):
    path: str | None = Field(None, description="a Parquet file, folder or glob on any fsspec URL")
    template: TemplateSpec | None = Field(None, description="prompts from a template instead")
    prompt_column: str = "prompt"
    id_column: str | None = Field(None, description="unique sample ids; default: file#row")
    seed_column: str | None = Field(None, description="per-row integer seeds")
    negative_prompt_column: str | None = None
    duplicate_ids: Literal["error", "keep"] = Field(
        "error", description="what to do when id_column repeats within a shard"
    )

    @model_validator(mode="before")
    @classmethod
    def _mark_no_source(cls, data: Any) -> Any:
        # Flag the missing source on `path` itself, so the error shows next to any others.
        if isinstance(data, dict) and data.get("path") is None and data.get("template") is None:
            return {**data, "path": _NO_SOURCE}
        return data

    @field_validator("path")
    @classmethod
    def _path_required(cls, v: str | None) -> str | None:
        if v == _NO_SOURCE:
            raise ValueError("required (or give input.template instead)")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> InputSpec:
        if self.path is not None and self.template is not None:
            raise ValueError("template: give either input.path or input.template, not both")
        if self.template is not None:
            for name in ("id_column", "seed_column", "negative_prompt_column"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: not used with input.template (rows are "
                                     "identified as template#ROW)")
            if self.prompt_column in self.template.slots:
                raise ValueError(f"prompt_column: {self.prompt_column!r} is also a slot name")
        return self


class ModelSpec(_Section):
    family: Literal["gan", "autoregressive", "diffusers", "null"] = "gan"
    path: str | None = Field(None, description="model folder or hub id; default: shipped model")
    encoder: str | None = Field(None, description="text encoder folder or hub id (gan/AR)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    scheduler: str | None = Field(None, description="diffusers scheduler class name")
    trust_remote_code: bool = False
    options: dict[str, Any] = Field(default_factory=dict, description="family-specific knobs")


class GenerationSpec(_Section):
    width: int | None = Field(None, ge=8, le=8192, description="default: the model's size")
    height: int | None = Field(None, ge=8, le=8192, description="default: the model's size")
    images_per_prompt: int = Field(1, ge=1, le=1000)
    seed: int = Field(0, ge=0)
    steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0)


class OutputSpec(_Section):
    path: str = Field("./out/job", description="any fsspec URL")
    format: Literal["files", "webdataset", "parquet"] = "files"
    image_format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality")
    retries: int = Field(5, ge=0, le=50, description="attempts per storage call after the first")
    retry_backoff_s: float = Field(0.5, gt=0, le=60, description="first backoff; doubles, capped")


# What one accelerator batch holds comfortably: SD-class pipelines at 512-1024 px, the small
# GAN and autoregressive models at 64 px; the null generator's batches only amortise overhead.
DEFAULT_BATCH_SIZE = {"diffusers": 8, "gan": 64, "autoregressive": 16, "null": 64}


class RuntimeSpec(_Section):
    actors: int | Literal["auto"] = Field("auto", description="'auto' = one per GPU (CPU: 1)")
    batch_size: int = Field(
        8, ge=1, le=4096, description="prompts per generator batch; 'auto' or unset = per "
        "model family (diffusers 8, gan 64, autoregressive 16, null 64)")
    shard_size: int = Field(1000, ge=1, le=1_000_000)
    shards_in_flight: int = Field(2, ge=1, le=16, description="queued shards per actor")
    max_shard_attempts: int = Field(3, ge=1, le=100)
    max_actor_failures: int = Field(
        8, ge=0, description="actor start failures and deaths tolerated before the job stops")
    stall_timeout_s: float = Field(
        900, gt=0, description="an actor holding work with no batch done for this long is "
        "killed and replaced")
    cpus_per_actor: int | None = Field(
        None, ge=1, description="default: a GPU node's CPUs per GPU; with no GPU, all CPUs "
        "/ actors")
    progress_interval_s: float = Field(2.0, gt=0)
    deterministic: bool | Literal["auto"] = Field(
        "auto", description="encode and generate one sample per forward so images are "
        "byte-identical across batch, shard and actor layouts; 'auto' = on CPU only")
    embedding_cache: int = Field(4096, ge=0, description="encoded prompts kept per actor")
    lock_timeout_s: float = Field(
        900, gt=0, description="a run lock whose heartbeat is older than this can be taken over")

    @field_validator("actors")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be 'auto' or a positive number")
        return v



class JobSpec(_Section):
    """A whole job, validated on creation: every unknown key or bad value is an error."""

    name: str = "job"
    input: InputSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    storage_options: dict[str, Any] = Field(default_factory=dict, description="passed to fsspec")

    @model_validator(mode="before")
    @classmethod
    def _batch_size_for_family(cls, data: Any) -> Any:
        """``runtime.batch_size`` unset or 'auto': the model family's default, resolved here
        so the spec only ever holds a number."""
        if not isinstance(data, dict) or not isinstance(data.get("runtime", {}), dict):
            return data
        runtime, model = data.get("runtime", {}), data.get("model")
        family = (model.family if isinstance(model, ModelSpec) else
                  model.get("family") if isinstance(model, dict) else None)
        family = family or ModelSpec.model_fields["family"].default
        if (runtime.get("batch_size", "auto") == "auto" and isinstance(family, str)
                and family in DEFAULT_BATCH_SIZE):
            data = {**data, "runtime": {**runtime, "batch_size": DEFAULT_BATCH_SIZE[family]}}
        return data

    def fingerprint(self, input_signature: str = "") -> str:
        """Identifies what the output will contain; runtime knobs that don't change it are out."""
        content = self.model_dump(exclude={"runtime", "storage_options", "name"})
        content["output"].pop("retries")
        content["output"].pop("retry_backoff_s")
        content["shard_size"] = self.runtime.shard_size
        content["input_signature"] = input_signature
        blob = json.dumps(content, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def public_dump(self) -> dict[str, Any]:
        """The resolved spec with credentials removed, for ``_job.json`` and logs."""
        return redact(self.model_dump())


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


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` (value parsed as YAML) to a raw spec dict."""
    if "=" not in assignment:
        raise SpecError(f"--set {assignment!r}: expected dotted.key=value")
    dotted, text = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"--set {dotted}: {part!r} is not a section")
        node = child
    # Paths, ids and template text stay strings even when YAML would read them otherwise.
    if parts[-1] in ("path", "encoder", "name", "text") or parts[-1].endswith("_column"):
        node[parts[-1]] = text
        return
    try:
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise SpecError(f"--set {dotted}: {text!r} is not a YAML value ({e})") from None


def _field_hint(loc: tuple[Any, ...]) -> str:
    model: Any = JobSpec
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return ""
        field = fields[part]
        model = field.annotation
    return f" ({field.description})" if field is not None and field.description else ""


_FIELD_PREFIX = re.compile(r"^Value error, (\w+): (.*)$", re.S)


def _value_error(loc: tuple[Any, ...], msg: str) -> tuple[tuple[Any, ...], str]:
    """A cross-field check says ``field: why``; move ``field`` into the dotted path."""
    match = _FIELD_PREFIX.match(msg)
    if not match:
        return loc, msg.removeprefix("Value error, ")
    return (*loc, match.group(1)), match.group(2)


def _describe(error: ValidationError) -> str:
    problems: dict[str, list[str]] = {}
    for e in error.errors():
        # Union members add their type name to the location; the field path is what matters.
        loc = tuple(p for p in e["loc"] if not str(p).startswith(("int", "literal")))
        msg = e["msg"]
        if e["type"] == "value_error":
            loc, msg = _value_error(loc, msg)
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check its spelling against the README's job spec table"
        elif e["type"] == "missing":
            msg = "required"
        key = ".".join(str(p) for p in loc)
        problems.setdefault(key, [_field_hint(loc)]).append(msg)
    lines = [f"  {k}: {' or '.join(dict.fromkeys(m[1:]))}{m[0]}" for k, m in problems.items()]
    return "invalid job spec:\n" + "\n".join(lines)


def today_utc() -> str:
    """Today's date in UTC as YYYY-MM-DD: the default run date."""
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def parse_date(text: str) -> str:
    """Check a YYYY-MM-DD date and return it unchanged."""
    try:
        return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        raise SpecError(f"--date {text!r}: expected YYYY-MM-DD") from None


_DATED_FIELDS = (("name",), ("input", "path"), ("output", "path"))
_SEED_FIELDS = (("generation", "seed"), ("input", "template", "seed"))


def _node(raw: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    for part in path[:-1]:
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw if isinstance(raw, dict) else None


def apply_date(raw: dict[str, Any], date: str) -> None:
    """Fill ``{date}`` and ``{run_id}`` (name-date) in the job name and input/output paths.

    A seed written as ``"{date}"`` becomes YYYYMMDD, so each night draws new prompts and
    images while a rerun of the same date draws the same ones. Nothing else is touched:
    a template's own ``{slot}`` braces stay as they are.
    """
    name = str(raw.get("name", "job"))
    if "{run_id}" in name:
        raise SpecError("name: cannot contain {run_id} (the run id is made from the name)")
    run_id = name.replace("{date}", date) if "{date}" in name else f"{name}-{date}"
    for path in _DATED_FIELDS:
        node = _node(raw, path)
        if node is not None and isinstance(node.get(path[-1]), str):
            node[path[-1]] = node[path[-1]].replace("{date}", date).replace("{run_id}", run_id)
    for path in _SEED_FIELDS:
        node = _node(raw, path)
        if node is not None and node.get(path[-1]) == "{date}":
            node[path[-1]] = int(date.replace("-", ""))


def build_spec(raw: dict[str, Any], overrides: list[str] = (), date: str | None = None) -> JobSpec:
    """Validate a raw dict (plus ``--set`` overrides) into a JobSpec or raise SpecError.

    ``{date}``/``{run_id}`` placeholders are filled with ``date`` (default: today, UTC).
    """
    raw = json.loads(json.dumps(raw or {}, default=str))
    for assignment in overrides:
        apply_override(raw, assignment)
    apply_date(raw, parse_date(date) if date else today_utc())
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_describe(e)) from None


def load_spec(path: str, overrides: list[str] = (), date: str | None = None) -> JobSpec:
    """Read a YAML job file and validate it with ``--set`` overrides and the run date."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise SpecError(f"job file not found: {path}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path} is not valid YAML: {e}") from None
    if raw is not None and not isinstance(raw, dict):
        raise SpecError(f"{path}: a job spec is a YAML mapping of sections")
    return build_spec(raw or {}, overrides, date)
