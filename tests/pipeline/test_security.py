"""Security basics (issue 5, requirement 6): object names never come from ids, weights load
without pickle, remote code stays off, and credentials never leave the spec."""

import ast
import json
import logging
import os
import re

import pyarrow.parquet as pq
import pytest
import s3fs

from pipeline.output.storage import OutputFolder, StorageError
from pipeline.runner import run_job
from pipeline.spec import JobSpec, SpecError, build_spec
from tests.conftest import REPO, write_prompts

ROOT = str(REPO)
KEY, SECRET = "AKIAEXAMPLEKEY7Q3Z", "s3cr3t-value-that-must-not-leak/9x"
NASTY_IDS = ["../../etc/passwd", "a/b\x00c", "/abs/path", "..", "C:\\win\\x", "ok-id",
             "é/🎨\n\t", " "]


def _sources(*folders):
    for folder in folders:
        for base, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(base, name)
                    yield os.path.relpath(path, ROOT), ast.parse(open(path).read())


def _calls(tree):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _keyword(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_weights_load_without_pickle():
    """Only safetensors or torch.load(weights_only=True); no pickle, dill or joblib."""
    problems = []
    for path, tree in _sources("models", "pipeline"):
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle")
                       for n in names) or (getattr(node, "module", "") == "torch"
                                           and "load" in names):
                    problems.append(f"{path}:{node.lineno}: imports {', '.join(names)}")
        for call in _calls(tree):
            f = call.func
            if isinstance(f, ast.Attribute) and f.attr in ("load", "loads") and \
                    isinstance(f.value, ast.Name) and f.value.id in ("torch", "pickle"):
                flag = _keyword(call, "weights_only")
                if f.value.id == "pickle" or not (isinstance(flag, ast.Constant) and flag.value
                                                  is True):
                    problems.append(f"{path}:{call.lineno}: {f.value.id}.{f.attr} without "
                                    "weights_only=True")
    assert not problems, "\n".join(problems)


def test_trust_remote_code_is_off_unless_the_spec_opts_in():
    assert JobSpec.model_validate({"input": {"path": "x"}}).model.trust_remote_code is False
    forced = [f"{path}:{call.lineno}" for path, tree in _sources("models", "pipeline")
              for call in _calls(tree)
              if isinstance(_keyword(call, "trust_remote_code"), ast.Constant)
              and _keyword(call, "trust_remote_code").value is True]
    assert not forced, f"trust_remote_code=True hard-coded at {forced}"
    actor = open(os.path.join(ROOT, "pipeline", "executor", "actor.py")).read()
    assert "m.trust_remote_code" in actor  # actors pass the spec's own value through


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def secret_job(ray_local, s3_endpoint, tmp_path_factory):
    """A job whose credentials travel in storage_options, with ids that look like paths."""
    options = {"endpoint_url": s3_endpoint, "key": KEY, "secret": SECRET}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("secrets")
    local = write_prompts(tmp_path_factory.mktemp("in") / "p.parquet",
                          [f"a red circle {i}" for i in range(len(NASTY_IDS))], id=NASTY_IDS)
    fs.put(local, "secrets/in/p.parquet")
    spec = build_spec({"name": "secrets", "input": {"path": "s3://secrets/in/p.parquet",
                                                    "id_column": "id"},
                       "model": {"family": "null"},
                       "generation": {"width": 16, "height": 16},
                       "output": {"path": "s3://secrets/out"},
                       "runtime": {"shard_size": 5, "progress_interval_s": 0.1},
                       "storage_options": options})
    records, synthset = _Records(), logging.getLogger("synthset")
    level = synthset.level
    synthset.addHandler(records)
    synthset.setLevel(logging.DEBUG)
    try:
        run_job(spec, show_progress=False)
    finally:
        synthset.removeHandler(records)
        synthset.setLevel(level)
    return fs, "secrets/out", records.lines, ray_local


def test_ids_never_become_object_names(secret_job):
    fs, out, _, _ = secret_job
    names = sorted(p[len(out) + 1:] for p in fs.find(out))
    allowed = re.compile(r"^(_job\.json|_progress\.json|_SUCCESS|_manifest\.pq|\d{5}\.parquet|"
                         r"\d{5}_stats\.json|\d{5}/\d{9}\.png)$")
    assert names and all(allowed.match(n) for n in names), names
    rows = [r for n in names if n.endswith(".parquet")
            for r in pq.read_table(f"{out}/{n}", filesystem=fs).to_pylist()]
    assert [r["id"] for r in rows] == NASTY_IDS  # the original ids stay in the metadata
    assert all(r["status"] == "success" for r in rows)


def _ray_logs(ray) -> str:
    """Everything the actors and Ray wrote to this session's log folder."""
    logs = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    text = []
    for base, _, names in os.walk(logs):
        for name in names:
            with open(os.path.join(base, name), "rb") as f:
                text.append(f.read().decode(errors="replace"))
    return "\n".join(text)


def test_credentials_never_reach_outputs_or_logs(secret_job):
    fs, out, lines, ray = secret_job
    for path in fs.find(out):
        data = fs.cat(path)
        assert KEY.encode() not in data and SECRET.encode() not in data, path
    job = json.loads(fs.cat(f"{out}/_job.json"))
    assert job["spec"]["storage_options"] == {"endpoint_url": fs.endpoint_url, "key": "***",
                                              "secret": "***"}
    assert any("shards to run" in line for line in lines)  # the driver did log
    ray_logs = _ray_logs(ray)
    assert "GenerationActor" in ray_logs  # the actor's own log files were read
    for text in ("\n".join(lines), ray_logs):
        assert KEY not in text and SECRET not in text


def test_credentials_never_reach_error_messages(s3_endpoint):
    options = {"endpoint_url": s3_endpoint.replace("://", f"://{KEY}:{SECRET}@"),
               "key": KEY, "secret": SECRET}
    folder = OutputFolder("s3://no-such-bucket-y/out", options, retries=0)
    with pytest.raises(StorageError) as e:
        folder.write_bytes("x", b"x")
    with pytest.raises(SpecError) as bad_spec:
        build_spec({"input": {"path": "x"}, "storage_options": options,
                    "runtime": {"actors": 0}})
    for text in (str(e.value), folder.display("x"), str(bad_spec.value)):
        assert KEY not in text and SECRET not in text
