"""JobSpec: the typed job file, ``--set`` overrides, fingerprint and a secret-free dump."""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from models import config_files
from models.config_files import one_of
from models.families import family_names, get_family
from pipeline.input.template_spec import TemplateSpec
from pipeline.output.formats import format_names, get_format
from pipeline.redact import redact


class SpecError(ValueError):
    """A job spec that cannot run; the message names the field and how to fix it."""


_Section = config_files.Section


_NO_SOURCE = "\0 no input source"


def _not_blank(path: str | None) -> str | None:
    """An empty path (an unset shell variable, say) would mean the current directory."""
    if path is not None and not path.strip():
        raise ValueError(f"must not be empty (got {path!r}); give a folder, file or URL")
    return path


class InputSpec(_Section):
    path: str | None = Field(None, description="a Parquet file, folder or glob on any fsspec URL")
    template: TemplateSpec | None = Field(None, description="prompts from a template instead")
    prompt_column: str = "prompt"
    id_column: str | None = Field(None, description="unique sample ids; default: file#row")
    seed_column: str | None = Field(None, description="per-row integer seeds")
    negative_prompt_column: str | None = None
    duplicate_ids: Literal["error", "keep"] = Field(
        "error", description="ids repeated anywhere in the input: error = refuse the job at "
        "plan time, naming a few; keep = generate every row"
    )
    allow_empty: bool = Field(False, description="an input of zero rows completes with an "
                              "empty _SUCCESS instead of failing")

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
        return _not_blank(v)

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
    family: str = Field("gan", description="a family of models/families.py, or a "
                        "synthset.models plugin")
    path: str | None = Field(None, description="model folder or hub id; default: shipped model")
    factory: str | None = Field(None, description="family custom: 'package.module:callable' "
                                "returning an ImageModel")
    encoder: str | None = Field(None, description="text encoder folder or hub id (gan/AR)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    scheduler: str | None = Field(None, description="diffusers scheduler class name")
    trust_remote_code: bool = False
    options: dict[str, Any] = Field(default_factory=dict, description="family-specific knobs")

    @field_validator("family", mode="before")
    @classmethod
    def _known_family(cls, v: Any) -> Any:
        names = family_names()
        if v is None:  # YAML reads `family: null` as no value; the family is meant
            return "null"
        if v not in names:
            raise ValueError(f"Input should be {one_of(names)}; got {v!r}")
        return v


class GenerationSpec(_Section):
    width: int | None = Field(None, ge=8, le=8192, description="default: the model's size")
    height: int | None = Field(None, ge=8, le=8192, description="default: the model's size")
    images_per_prompt: int = Field(1, ge=1, le=1000)
    seed: int = Field(0, ge=0)
    steps: int | None = Field(None, ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0)


class OutputSpec(_Section):
    path: str = Field("./out/job", description="any fsspec URL")
    format: str = Field("files", description="a format of pipeline/output/formats, or "
                        "'package.module:WriterClass'")
    image_format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(95, ge=1, le=100, description="JPEG/WebP quality")
    retries: int = Field(5, ge=0, le=50, description="attempts per storage call after the first")
    retry_backoff_s: float = Field(0.5, gt=0, le=60, description="first backoff; doubles, capped")

    @field_validator("path")
    @classmethod
    def _path_given(cls, v: str) -> str:
        return _not_blank(v)

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        try:
            get_format(v)
        except ValueError as e:
            if ":" in v:
                raise
            raise ValueError(f"Input should be {one_of(format_names())} (or "
                             f"'package.module:WriterClass'); got {v!r}") from e
        return v


class QualitySpec(_Section):
    """Per-sample quality signals, best-of-n and near-duplicate groups (docs/quality.md)."""

    scorers: list[str] = Field(default_factory=list, description="scorers of "
                               "pipeline/stages/scorers: phash, scene, clip, safety")
    clip_model: str | None = Field(None, description="CLIP folder or hub id (scorer clip)")
    safety_model: str | None = Field(None, description="folder or hub id of a diffusers "
                                     "StableDiffusionSafetyChecker and its CLIP image "
                                     "processor (scorer safety)")
    accept: str | None = Field(None, description="keep a draw when this holds, e.g. "
                               "'clip_score >= 0.28 and scene_match == 1'; else redraw")
    max_attempts: int = Field(1, ge=1, le=64, description="draws per sample with accept")
    keep_rejected: bool = Field(False, description="with accept: also store the draws that "
                                "were not kept, as rows of status 'rejected' with keys "
                                "KEY_aN (N = the attempt); docs/quality.md")
    dedup: bool | Literal["auto"] = Field(
        "auto", description="group duplicates after the job commits into "
        "OUTPUT/_duplicates.pq (exact copies by sha256, near ones by average hash and "
        "colour); 'auto' = "
        "when any scorer runs")
    dedup_threshold: int = Field(4, ge=0, le=16, description="max Hamming distance of two "
                                 "average hashes (of 64 bits) in one group")
    dedup_bands: int = Field(4, ge=1, le=16, description="LSH bands of the 64 bits; pairs "
                             "closer than this many bits are always found (docs/quality.md)")

    @field_validator("scorers")
    @classmethod
    def _known_scorers(cls, v: list[str]) -> list[str]:
        from pipeline.stages.scorers import scorer_names

        for name in v:
            if name not in scorer_names():
                raise ValueError(f"Input should be {one_of(scorer_names())}; got {name!r}")
        if len(set(v)) != len(v):
            raise ValueError(f"lists a scorer twice: {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _dedup_auto(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("dedup", "auto") == "auto":
            return {**data, "dedup": bool(data.get("scorers"))}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> QualitySpec:
        from pipeline.stages.accept import parse_accept
        from pipeline.stages.scorers import numeric_columns

        if "clip" in self.scorers and not self.clip_model:
            raise ValueError("clip_model: required with the clip scorer (a folder or hub id)")
        if "safety" in self.scorers and not self.safety_model:
            raise ValueError("safety_model: required with the safety scorer (a folder or hub "
                             "id, e.g. CompVis/stable-diffusion-safety-checker)")
        if self.accept is not None:
            parse_accept(self.accept, numeric_columns(self.scorers))
        elif self.max_attempts > 1:
            raise ValueError("max_attempts: needs quality.accept (what makes a draw good)")
        if self.keep_rejected and self.accept is None:
            raise ValueError("keep_rejected: needs quality.accept (what rejects a draw)")
        return self


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
    capacity_timeout_s: float = Field(
        60, gt=0, description="how long actors may wait for a node that can host them when "
        "none in the cluster can (raise it where an autoscaler adds nodes)")
    deterministic: bool | Literal["auto"] = Field(
        False, description="encode and generate one sample per forward so images are "
        "byte-identical across batch, shard and actor layouts (what --retry-failed redraws "
        "and cross-batch-size comparisons need; resume does not); 'auto' = on CPU only")
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
    quality: QualitySpec = Field(default_factory=QualitySpec)
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
                  model.get("family", "gan") if isinstance(model, dict) else "gan")
        family = "null" if family is None else family  # as ModelSpec reads a YAML null
        if runtime.get("batch_size", "auto") == "auto" and isinstance(family, str) \
                and family in family_names():
            batch = get_family(family).batch_size
            data = {**data, "runtime": {**runtime, "batch_size": batch}}
        return data

    def fingerprint(self, input_signature: str = "") -> str:
        """Identifies what the output will contain; runtime knobs that don't change it are out."""
        content = self.model_dump(exclude={"runtime", "storage_options", "name"})
        default = QualitySpec().model_dump()
        if content["model"]["factory"] is None:
            del content["model"]["factory"]  # keeps fingerprints of earlier runs valid
        content["input"].pop("allow_empty")  # what it changes shows in the input signature
        content["output"].pop("retries")
        content["output"].pop("retry_backoff_s")
        # dedup runs after the shards commit: it changes none of them
        for name in ("dedup", "dedup_threshold", "dedup_bands"):
            content["quality"].pop(name)
            default.pop(name)
        if not content["quality"]["keep_rejected"]:  # fingerprints from before it existed
            content["quality"].pop("keep_rejected")
            default.pop("keep_rejected")
        if content["quality"] == default:
            del content["quality"]  # keeps fingerprints of jobs from before quality existed
        content["shard_size"] = self.runtime.shard_size
        content["input_signature"] = input_signature
        blob = json.dumps(content, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def public_dump(self) -> dict[str, Any]:
        """The resolved spec with credentials removed, for ``_job.json`` and logs."""
        return redact(self.model_dump())


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` (value parsed as YAML) to a raw spec dict."""
    config_files.apply_override(raw, assignment, SpecError)


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
        raise SpecError(config_files.describe(e, JobSpec, "job spec", "docs/job-spec.md")) \
            from None


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
