"""``synthset submit/logs/stop`` against a real Ray head started with ``ray start --head``.

The head runs in its own process group with its own ports and temp dir, and is stopped
by signalling that group: ``ray stop`` would also stop every other Ray on the machine.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.executor.submit import EXCLUDES, build_submission, default_working_dir
from pipeline.spec import SpecError
from tests.conftest import free_port, write_prompts

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(REPO, "jobs", "templates.yaml")
PORTS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
         "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
         "node-manager-port", "object-manager-port")
# A throwaway head on loopback: no token auth (a ~/.ray/auth_token would switch it on).
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", PATH=f"{BIN}:{os.environ['PATH']}")


def _wait_for_dashboard(url: str, proc: subprocess.Popen, log: str) -> None:
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}:\n{open(log).read()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the dashboard at {url} did not come up:\n{open(log).read()[-3000:]}")


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
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
    """A one-CPU Ray head with its dashboard, stopped (with its whole group) afterwards."""
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # Ray's socket paths must stay short
    ports = {name: free_port() for name in PORTS}
    log = os.path.join(temp, "ray-start.log")
    args = [f"{BIN}/ray", "start", "--head", "--block", "--num-cpus=1",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats",
            *(f"--{name}={port}" for name, port in ports.items())]
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=ENV,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{ports['dashboard-port']}"
        _wait_for_dashboard(url, proc, log)
        yield url
    finally:
        _stop_group(proc)
        shutil.rmtree(temp, ignore_errors=True)


def synthset(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([f"{BIN}/synthset", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def test_submission_ships_the_checkout_and_pins_the_date():
    sub = build_submission(TEMPLATES, ["runtime.shard_size=10"], "2026-11-29",
                           default_working_dir())
    env = sub["runtime_env"]
    assert env["working_dir"] == REPO and ".venv/" in env["excludes"]
    assert EXCLUDES == env["excludes"] and "models/" not in " ".join(EXCLUDES)  # weights go
    argv = shlex.split(sub["entrypoint"])
    assert argv[:3] == ["python", "-m", "pipeline.cli"]
    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.job, args.date) == ("run", "jobs/templates.yaml", "2026-11-29")
    assert args.overrides == ["runtime.shard_size=10"]
    assert sub["submission_id"].startswith("synthset-templates-2026-11-29-")
    image = build_submission(TEMPLATES, [], "2026-11-29", None)
    assert "working_dir" not in image["runtime_env"] and TEMPLATES in image["entrypoint"]
    with pytest.raises(SpecError, match="outside the working dir"):
        build_submission(TEMPLATES, [], "2026-11-29", os.path.join(REPO, "tests"))


@pytest.mark.slow
def test_submit_logs_and_stop_on_a_real_head(ray_head, tmp_path, tiny_gan):
    prompts = write_prompts(tmp_path / "p.parquet", ["a red circle", "a blue square", "x"])
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.yaml").write_text(
        f"name: sub\ninput: {{path: {prompts}}}\nmodel: {{family: gan, path: {tiny_gan}}}\n"
        f"output: {{path: '{tmp_path}/out/{{run_id}}'}}\nruntime: {{shard_size: 2}}\n")
    done = synthset("submit", str(work / "job.yaml"), "--address", ray_head, "--working-dir",
                    str(work), "--date", "2026-11-29", "--wait")
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    job_id = done.stdout.splitlines()[0]
    assert job_id.startswith("synthset-sub-2026-11-29-")
    assert "done: 3 images, 0 failed, 2 shards" in done.stdout
    assert (tmp_path / "out" / "sub-2026-11-29" / "_SUCCESS").exists()
    logs = synthset("logs", job_id, "--address", ray_head)
    assert logs.returncode == 0 and "done: 3 images" in logs.stdout
    assert f"job {job_id}: SUCCEEDED" in logs.stderr
    assert "already finished" in synthset("stop", job_id, "--address", ray_head).stdout

    # a longer job, stopped while it runs: SIGTERM unwinds it and its run lock is released
    slots = {"a": [f"a{i}" for i in range(40)], "b": [f"b{i}" for i in range(50)]}
    (work / "long.yaml").write_text(yaml.safe_dump({
        "name": "long", "input": {"template": {"text": "{a} {b}", "slots": slots}},
        "model": {"family": "gan", "path": tiny_gan},
        "output": {"path": f"{tmp_path}/out/{{run_id}}"},
        "runtime": {"shard_size": 20, "progress_interval_s": 0.2}}))
    started = synthset("submit", str(work / "long.yaml"), "--address", ray_head,
                       "--working-dir", str(work), "--date", "2026-11-30")
    second = started.stdout.splitlines()[0]
    out = tmp_path / "out" / "long-2026-11-30"
    assert _eventually(lambda: list(out.glob("_lock.*")), 120), "the run never took its lock"
    assert "stopping" in synthset("stop", second, "--address", ray_head).stdout
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_head)
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
