"""Job spec validation: every bad key or value is named with its dotted path."""

import json

import pytest

from pipeline.spec import SpecError, build_spec, load_spec


def test_unknown_and_missing_keys_are_named(tmp_path):
    with pytest.raises(SpecError) as e:
        build_spec({"input": {"pth": "x.parquet"}, "runtime": {"shard_sise": 3}})
    msg = str(e.value)
    assert "input.path: required" in msg
    assert "input.pth: unknown key" in msg
    assert "runtime.shard_sise: unknown key" in msg


def test_bad_values_are_named_with_a_hint():
    with pytest.raises(SpecError) as e:
        build_spec({"input": {"path": "a"}, "generation": {"width": 2},
                    "output": {"image_format": "gif"}, "runtime": {"actors": 0}})
    msg = str(e.value)
    assert "generation.width" in msg and "greater than or equal to 8" in msg
    assert "output.image_format" in msg and "'png', 'jpeg' or 'webp'" in msg
    assert "runtime.actors" in msg


def test_set_overrides_any_field_and_parses_values():
    spec = build_spec({"input": {"path": "a"}}, [
        "runtime.batch_size=3", "generation.guidance_scale=7.5", "model.trust_remote_code=true",
        "input.path=s3://bkt/p/*.parquet", "storage_options.endpoint_url=http://127.0.0.1:9",
        "input.id_column=123"])
    assert spec.runtime.batch_size == 3
    assert spec.generation.guidance_scale == 7.5
    assert spec.model.trust_remote_code is True
    assert spec.input.path == "s3://bkt/p/*.parquet"
    assert spec.input.id_column == "123"  # a column name, not the number 123
    assert spec.storage_options["endpoint_url"] == "http://127.0.0.1:9"
    with pytest.raises(SpecError, match="runtime.nope: unknown key"):
        build_spec({"input": {"path": "a"}}, ["runtime.nope=1"])
    with pytest.raises(SpecError, match="expected dotted.key=value"):
        build_spec({"input": {"path": "a"}}, ["runtime.batch_size"])


def test_public_dump_removes_secrets():
    spec = build_spec({"input": {"path": "s3://user:hunter2@host/bkt/p.parquet"},
                       "storage_options": {"key": "AKIA123", "secret": "s3cr3t",
                                           "client_kwargs": {"aws_session_token": "SESSIONXYZ"},
                                           "endpoint_url": "http://127.0.0.1:9000"}})
    dumped = json.dumps(spec.public_dump())
    for secret in ("AKIA123", "s3cr3t", "SESSIONXYZ", "hunter2"):
        assert secret not in dumped
    assert "http://127.0.0.1:9000" in dumped


def test_fingerprint_ignores_runtime_knobs_but_not_content():
    base = {"input": {"path": "a"}}
    fp = build_spec(base).fingerprint("sig")
    assert build_spec(base, ["runtime.actors=4", "runtime.batch_size=2"]).fingerprint("sig") == fp
    assert build_spec(base, ["generation.seed=1"]).fingerprint("sig") != fp
    assert build_spec(base, ["runtime.shard_size=10"]).fingerprint("sig") != fp
    assert build_spec(base).fingerprint("other-input") != fp


def test_load_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="job file not found"):
        load_spec(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(str(bad))


def test_shipped_job_files_validate():
    for name in ("jobs/demo.yaml",):
        spec = load_spec(name)
        assert spec.input.path


def test_batch_size_defaults_per_family_and_an_explicit_one_wins():
    sizes = {family: build_spec({"input": {"path": "p.parquet"},
                                 "model": {"family": family, "path": "m"}}).runtime.batch_size
             for family in ("gan", "autoregressive", "diffusers", "null")}
    assert sizes == {"gan": 64, "autoregressive": 16, "diffusers": 8, "null": 64}
    spec = build_spec({"input": {"path": "p.parquet"}, "model": {"family": "diffusers",
                                                                  "path": "m"},
                       "runtime": {"batch_size": 2}})
    assert spec.runtime.batch_size == 2
    with pytest.raises(SpecError, match="runtime.batch_size: Input should be less than"):
        build_spec({"input": {"path": "p.parquet"}, "runtime": {"batch_size": 5000}})


def test_batch_size_family_comes_from_a_model_object_and_a_bad_family_is_a_spec_error():
    from pipeline.spec import JobSpec, ModelSpec

    spec = JobSpec(input={"path": "p.parquet"}, model=ModelSpec(family="diffusers", path="m"))
    assert spec.runtime.batch_size == 8
    with pytest.raises(SpecError, match="model.family"):
        build_spec({"input": {"path": "p.parquet"}, "model": {"family": ["gan"]}})


def test_the_null_family_survives_yaml_and_set(tmp_path):
    """`null` is YAML's null: `--set model.family=null` and `family: null` both mean the
    null family, not 'no value'."""
    assert build_spec({"input": {"path": "p"}}, ["model.family=null"]).model.family == "null"
    job = tmp_path / "job.yaml"
    job.write_text("input: {path: p.parquet}\nmodel:\n  family: null\n")
    spec = load_spec(str(job))
    assert spec.model.family == "null" and spec.runtime.batch_size == 64


def test_choice_errors_say_what_was_received():
    with pytest.raises(SpecError) as e:
        build_spec({"input": {"path": "p"}, "output": {"image_format": "gif"},
                    "model": {"family": "stable-diffusion", "dtype": "fp8"}})
    text = str(e.value)
    assert "output.image_format: Input should be 'png', 'jpeg' or 'webp'; got 'gif'" in text
    assert "got 'stable-diffusion'" in text and "model.dtype" in text and "got 'fp8'" in text


@pytest.mark.parametrize("key", ["output.path", "input.path"])
@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_path_is_refused_before_anything_starts(key, value):
    with pytest.raises(SpecError, match=f"{key}: must not be empty"):
        build_spec({"input": {"path": "p.parquet"}}, [f"{key}={value}"])
