"""``synthset submit/logs/stop`` and ``run --address`` against a real Ray head started with
``ray start --head`` under ``RAY_AUTH_MODE=token``, as Ray >= 2.61 starts every cluster.

The head runs in its own process group with its own ports, temp dir and HOME, and is
stopped by signalling that group: ``ray stop`` would also stop every other Ray on the
machine. Its token sits in a file named by RAY_AUTH_TOKEN_PATH; clients get an empty HOME,
so no real ~/.ray is read or written.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from types import SimpleNamespace

import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.executor.submit import (
    EXCLUDES,
    PREFLIGHT,
    REQUIRED,
    build_submission,
    default_working_dir,
    find_token,
)
from pipeline.spec import SpecError
from tests.conftest import REPO as CONFTEST_REPO
from tests.conftest import free_port, write_prompts

BIN = os.path.dirname(sys.executable)
REPO = str(CONFTEST_REPO)
TEMPLATES = os.path.join(REPO, "jobs", "templates.yaml")
PORTS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
         "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
         "node-manager-port", "object-manager-port")
TOKEN = "synthset-test-token-5f2c9a"
# Clients as a new user has them: Ray's auth mode unset, no token anywhere (each test adds
# the source it means); HOME is set per head, empty.
ENV = {k: v for k, v in os.environ.items()
       if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
ENV["PATH"] = f"{BIN}:{os.environ['PATH']}"


def _wait_for_dashboard(url: str, proc: subprocess.Popen, log: str) -> None:
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}:\n{open(log).read()[-3000:]}")
        try:
            request = urllib.request.Request(f"{url}/api/version",
                                             headers={"Authorization": f"Bearer {TOKEN}"})
            urllib.request.urlopen(request, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the dashboard at {url} did not come up:\n{open(log).read()[-3000:]}")


def _stop_group(proc: subprocess.Popen) -> None:
    # `ray start --block` often outlives a SIGTERM by 15 s and more; its temp folder is
    # removed anyway, so a short grace then SIGKILL for the whole group
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            time.sleep(1)  # let the group's other members finish exiting, then make sure


@pytest.fixture(scope="module")
def ray_head():
    """A one-CPU Ray head with its dashboard and token auth, stopped (with its whole group)
    afterwards: ``url`` (Jobs API), ``gcs`` (for ``run --address``), ``token_path``, ``home``."""
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # Ray's socket paths must stay short
    token_path, home = os.path.join(temp, "token"), os.path.join(temp, "home")
    os.mkdir(home)
    with open(token_path, "w") as f:
        f.write(TOKEN + "\n")
    ports = {name: free_port() for name in PORTS}
    log = os.path.join(temp, "ray-start.log")
    args = [f"{BIN}/ray", "start", "--head", "--block", "--num-cpus=1",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats",
            *(f"--{name}={port}" for name, port in ports.items())]
    env = dict(ENV, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path, HOME=home)
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{ports['dashboard-port']}"
        _wait_for_dashboard(url, proc, log)
        yield SimpleNamespace(url=url, gcs=f"127.0.0.1:{ports['port']}",
                              token_path=token_path, home=home)
    finally:
        _stop_group(proc)
        shutil.rmtree(temp, ignore_errors=True)


def synthset(*args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([f"{BIN}/synthset", *args], capture_output=True, text=True,
                          env=dict(ENV, **env), timeout=timeout)


def test_submission_ships_the_checkout_and_pins_the_date():
    sub = build_submission(TEMPLATES, ["runtime.shard_size=10"], "2026-11-29",
                           default_working_dir())
    env = sub["runtime_env"]
    assert env["working_dir"] == REPO and ".venv/" in env["excludes"]
    assert EXCLUDES == env["excludes"] and "models/" not in " ".join(EXCLUDES)  # weights go
    check, run = sub["entrypoint"].split(" && ")
    assert shlex.split(check) == ["python", "-c", PREFLIGHT.format(modules=" ".join(REQUIRED))]
    argv = shlex.split(run)
    assert argv[:3] == ["python", "-m", "pipeline.cli"]
    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.job, args.date) == ("run", "jobs/templates.yaml", "2026-11-29")
    assert args.overrides == ["runtime.shard_size=10"]
    assert sub["submission_id"].startswith("synthset-templates-2026-11-29-")
    image = build_submission(TEMPLATES, [], "2026-11-29", None)
    assert "working_dir" not in image["runtime_env"]
    assert shlex.split(image["entrypoint"].split(" && ")[1])[5] == TEMPLATES
    with pytest.raises(SpecError, match="outside the working dir"):
        build_submission(TEMPLATES, [], "2026-11-29", os.path.join(REPO, "tests"))


@pytest.mark.slow
def test_submit_logs_and_stop_on_a_secured_head(ray_head, tmp_path, tiny_gan):
    """With the token in RAY_AUTH_TOKEN_PATH (and RAY_AUTH_MODE unset) everything works."""
    prompts = write_prompts(tmp_path / "p.parquet", ["a red circle", "a blue square", "x"])
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.yaml").write_text(
        f"name: sub\ninput: {{path: {prompts}}}\nmodel: {{family: gan, path: {tiny_gan}}}\n"
        f"output: {{path: '{tmp_path}/out/{{run_id}}'}}\nruntime: {{shard_size: 2}}\n")
    auth = {"RAY_AUTH_TOKEN_PATH": ray_head.token_path, "HOME": ray_head.home}
    done = synthset("submit", str(work / "job.yaml"), "--address", ray_head.url, "--working-dir",
                    str(work), "--date", "2026-11-29", "--wait", **auth)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    job_id = done.stdout.splitlines()[0]
    assert job_id.startswith("synthset-sub-2026-11-29-")
    assert "done: 3 images, 0 failed, 2 shards" in done.stdout
    assert (tmp_path / "out" / "sub-2026-11-29" / "_SUCCESS").exists()
    logs = synthset("logs", job_id, "--address", ray_head.url, **auth)
    assert logs.returncode == 0 and "done: 3 images" in logs.stdout
    assert f"job {job_id}: SUCCEEDED" in logs.stderr
    assert "already finished" in synthset("stop", job_id, "--address", ray_head.url,
                                          **auth).stdout

    # a longer job, stopped while it runs: SIGTERM unwinds it and its run lock is released
    slots = {"a": [f"a{i}" for i in range(40)], "b": [f"b{i}" for i in range(50)]}
    (work / "long.yaml").write_text(yaml.safe_dump({
        "name": "long", "input": {"template": {"text": "{a} {b}", "slots": slots}},
        "model": {"family": "gan", "path": tiny_gan},
        "output": {"path": f"{tmp_path}/out/{{run_id}}"},
        "runtime": {"shard_size": 20, "progress_interval_s": 0.2}}))
    started = synthset("submit", str(work / "long.yaml"), "--address", ray_head.url,
                       "--working-dir", str(work), "--date", "2026-11-30", **auth)
    second = started.stdout.splitlines()[0]
    out = tmp_path / "out" / "long-2026-11-30"
    assert _eventually(lambda: list(out.glob("_lock.*")), 120), "the run never took its lock"
    assert "stopping" in synthset("stop", second, "--address", ray_head.url, **auth).stdout
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_head.url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert _eventually(lambda: client.get_job_status(second).is_terminal(), 60)
    assert client.get_job_status(second).value == "STOPPED"
    assert _eventually(lambda: not list(out.glob("_lock.*")), 10)
    assert not (out / "_SUCCESS").exists()


def _eventually(condition, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return bool(condition())


def test_unreachable_head_is_a_clear_error():
    result = synthset("logs", "nope", "--address", f"http://127.0.0.1:{free_port()}",
                      timeout=60)
    assert result.returncode == 2 and "cannot reach the Ray Jobs API" in result.stderr


NO_TOKEN = "requires a token (token authentication is on) and none was found"


@pytest.mark.slow
def test_a_secured_head_names_the_missing_or_refused_token(ray_head, tmp_path):
    """No token, or a wrong one: submit, logs, stop and run --address say how to provide it,
    in one line and before anything runs; each of Ray's three token sources is found."""
    empty = {"HOME": str(tmp_path)}  # no ~/.ray/auth_token
    commands = {"submit": ["submit", TEMPLATES, "--no-working-dir", "--address", ray_head.url],
                "logs": ["logs", "synthset-x", "--address", ray_head.url],
                "stop": ["stop", "synthset-x", "--address", ray_head.url],
                "run": ["run", TEMPLATES, "--address", ray_head.gcs]}
    for name, args in commands.items():
        for env, expected in ((empty, f"{NO_TOKEN} in $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or"),
                              (dict(empty, RAY_AUTH_TOKEN="wrong"),
                               "refused the token from $RAY_AUTH_TOKEN")):
            result = synthset(*args, timeout=60, **env)
            assert result.returncode == 2, (name, result.stderr[-2000:])
            (line,) = result.stderr.strip().splitlines()  # one line, no traceback
            assert line.startswith(f"synthset {name}: the Ray cluster at ") and expected in line
            assert "ray get-auth-token" in line and "docs/operations.md" in line
    # the token from RAY_AUTH_TOKEN, then from ~/.ray/auth_token: the head answers
    found = synthset("logs", "synthset-x", "--address", ray_head.url, RAY_AUTH_TOKEN=TOKEN,
                     **empty)
    assert found.stderr.strip() == \
        f"synthset logs: the Ray Jobs API at {ray_head.url} answered: Job synthset-x does not exist"
    os.makedirs(tmp_path / ".ray")
    (tmp_path / ".ray" / "auth_token").write_text(TOKEN)
    found = synthset("stop", "synthset-x", "--address", ray_head.url, **empty)
    assert found.returncode == 2 and found.stderr.strip().endswith("does not exist")


@pytest.mark.slow
def test_run_address_joins_a_secured_cluster_with_the_token(ray_head, tmp_path, tiny_gan):
    """The driver's own ray.init gets the token (Ray would retry ~20 s, then blame the
    network): the job runs on the head's CPU and commits every shard."""
    prompts = write_prompts(tmp_path / "p.parquet", ["a red circle", "a blue square"])
    job = tmp_path / "job.yaml"
    job.write_text(f"name: drv\ninput: {{path: {prompts}}}\n"
                   f"model: {{family: gan, path: {tiny_gan}}}\n"
                   f"output: {{path: '{tmp_path}/out'}}\nruntime: {{shard_size: 1}}\n")
    result = synthset("run", str(job), "--address", ray_head.gcs, "--quiet",
                      RAY_AUTH_TOKEN_PATH=ray_head.token_path, HOME=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: 2 images, 0 failed, 2 shards" in result.stdout
    assert (tmp_path / "out" / "_SUCCESS").exists()


TOKEN_CASES = {
    "env": {"RAY_AUTH_TOKEN": " from-env "},
    "env beats path and file": {"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": "FILE"},
    "blank env ends the search": {"RAY_AUTH_TOKEN": "  "},
    "empty env is unset": {"RAY_AUTH_TOKEN": ""},
    "path": {"RAY_AUTH_TOKEN_PATH": "FILE"},
    "unreadable path ends the search": {"RAY_AUTH_TOKEN_PATH": "MISSING"},
    "default file": {},
}


@pytest.mark.parametrize("case", TOKEN_CASES)
@pytest.mark.parametrize("home_file", [True, False])
def test_find_token_agrees_with_rays_own_loader(case, home_file, tmp_path, monkeypatch):
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    (tmp_path / "tok").write_text("from-file\n")
    if home_file:
        os.makedirs(tmp_path / ".ray")
        (tmp_path / ".ray" / "auth_token").write_text("from-home")
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, value in TOKEN_CASES[case].items():
        value = {"FILE": str(tmp_path / "tok"), "MISSING": str(tmp_path / "no")}.get(value, value)
        monkeypatch.setenv(name, value)
    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()
    try:
        expected = loader.get_raw_token(ignore_auth_mode=True) \
            if loader.has_token(ignore_auth_mode=True) else None
    except AuthenticationError:  # Ray refuses a set but unreadable RAY_AUTH_TOKEN_PATH
        expected = None
    finally:
        loader.reset_cache()
    token, where = find_token()
    assert token == expected and where
    if token is None:
        assert re.search(r"RAY_AUTH_TOKEN", where)


def test_required_modules_cover_the_projects_dependencies():
    import importlib.metadata

    import tomllib

    project = tomllib.loads(open(os.path.join(REPO, "pyproject.toml")).read())["project"]
    owners = importlib.metadata.packages_distributions()
    provided = {d.lower().replace("_", "-") for m in REQUIRED for d in owners.get(m, [])}
    for requirement in project["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group().lower().replace("_", "-")
        assert name in provided, f"{name} (pyproject) has no import name in REQUIRED"
    assert "pipeline" in REQUIRED


def test_the_entrypoint_names_the_interpreter_and_what_it_lacks(tmp_path):
    """The head's `python` without the project's dependencies (here: this interpreter with
    its site-packages switched off, -S): the job stops at the check, in one line."""
    sub = build_submission(TEMPLATES, [], "2026-11-29", default_working_dir())
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    (fake / "python").chmod(0o755)
    env = dict(ENV, PATH=f"{fake}:/usr/bin:/bin", PYTHONPATH="")
    result = subprocess.run(["/bin/sh", "-c", sub["entrypoint"]], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"synthset: {sys.executable} (Python {sys.version.split()[0]}) ")
    assert "it lacks torch, transformers" in line and "fsspec" in line
    assert "pipeline" not in line.split("lacks")[1].split(":")[0]  # the checkout is there
    # the project's own interpreter passes the check silently
    check = shlex.split(sub["entrypoint"].split(" && ")[0])
    ok = subprocess.run([sys.executable, *check[1:]], cwd=REPO, capture_output=True, text=True,
                        timeout=60)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")


def test_the_gcs_probe_gives_up_on_a_port_that_is_not_a_gcs():
    """run --address with a wrong port (say, the dashboard's): the token probe answers
    'no' within seconds and leaves the error to ray.init, instead of waiting 40 s."""
    import socket

    from pipeline.executor.submit import PROBE_S, _gcs_refuses

    with socket.socket() as server:  # accepts connections, never speaks gRPC
        server.bind(("127.0.0.1", 0))
        server.listen()
        start = time.time()
        assert _gcs_refuses(f"127.0.0.1:{server.getsockname()[1]}") is False
        assert time.time() - start < PROBE_S + 3
    assert _gcs_refuses(f"127.0.0.1:{free_port()}") is False  # nothing listening
