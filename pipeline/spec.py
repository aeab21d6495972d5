"""JobSpec: the typed job file, ``--set`` overrides, fingerprint and a secret-free dump."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class SpecError(ValueError):
    """A job spec that cannot run; the message names the field and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputSpec(_Section):
    path: str = Field(description="a Parquet file, folder or glob on any fsspec URL")
    prompt_column: str = "prompt"
    id_column: str | None = Field(None, description="unique sample ids; default: file#row")
    seed_column: str | None = Field(None, description="per-row integer seeds")
    negative_prompt_column: str | None = None
    duplicate_ids: Literal["error", "keep"] = Field(
        "error", description="what to do when id_column repeats within a shard"
    )


class ModelSpec(_Section):
    family: Literal["gan", "autoregressive", "diffusers"] = "gan"
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


class RuntimeSpec(_Section):
    actors: int | Literal["auto"] = Field("auto", description="'auto' = one per GPU (CPU: 1)")
    batch_size: int = Field(8, ge=1, le=4096)
    shard_size: int = Field(1000, ge=1, le=1_000_000)
    shards_in_flight: int = Field(2, ge=1, le=16, description="queued shards per actor")
    max_shard_attempts: int = Field(3, ge=1, le=100)
    cpus_per_actor: int | None = Field(None, ge=1, description="default: all CPUs when no GPU")
    progress_interval_s: float = Field(2.0, gt=0)
    deterministic: bool | Literal["auto"] = Field(
        "auto", description="encode and generate one sample per forward so images are "
        "byte-identical across batch, shard and actor layouts; 'auto' = on CPU only")
    embedding_cache: int = Field(4096, ge=0, description="encoded prompts kept per actor")

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
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


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
    value = yaml.safe_load(text) if text.strip() else ""
    # Paths and ids stay strings even when YAML would read them as numbers or dates.
    if parts[-1] in ("path", "encoder", "name") or parts[-1].endswith("_column"):
        value = text
    node[parts[-1]] = value


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


def _describe(error: ValidationError) -> str:
    problems: dict[str, list[str]] = {}
    for e in error.errors():
        # Union members add their type name to the location; the field path is what matters.
        loc = tuple(p for p in e["loc"] if not str(p).startswith(("int", "literal")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check its spelling against the README's job spec table"
        elif e["type"] == "missing":
            msg = "required"
        key = ".".join(str(p) for p in loc)
        problems.setdefault(key, [_field_hint(loc)]).append(msg)
    lines = [f"  {k}: {' or '.join(dict.fromkeys(m[1:]))}{m[0]}" for k, m in problems.items()]
    return "invalid job spec:\n" + "\n".join(lines)


def build_spec(raw: dict[str, Any], overrides: list[str] = ()) -> JobSpec:
    """Validate a raw dict (plus ``--set`` overrides) into a JobSpec or raise SpecError."""
    raw = json.loads(json.dumps(raw or {}, default=str))
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_describe(e)) from None


def load_spec(path: str, overrides: list[str] = ()) -> JobSpec:
    """Read a YAML job file and validate it with ``--set`` overrides applied."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise SpecError(f"job file not found: {path}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path} is not valid YAML: {e}") from None
    if raw is not None and not isinstance(raw, dict):
        raise SpecError(f"{path}: a job spec is a YAML mapping of sections")
    return build_spec(raw or {}, overrides)
