"""Cluster submission through the Ray Jobs API: submit a job file, follow its logs, stop it.

What travels with a submission (the runtime_env):

* ``working_dir``: the project checkout (code, ``jobs/``, the shipped weights under
  ``models/weights``), minus virtualenvs, outputs and caches. Ray caps a working_dir at
  a few hundred MiB; larger models belong in the image or on object storage.
  ``working_dir=None`` submits nothing: the cluster image already has the project.
* the job file by its path inside the working_dir, with ``--set`` overrides and the run
  date pinned on the command line, so the cluster's clock and time zone don't matter.

Dependencies (torch, ray, ...) are not shipped: the cluster's image must have them, and
the entrypoint checks first that the head's ``python`` does (one line naming the
interpreter and what it lacks, instead of an ImportError deep in the run).
Credentials are never shipped either: nodes get them from their environment or role.

Token authentication: when the head asks for a token (HTTP 401, or the GCS refusing an
unauthenticated client), the token is looked up the way Ray does (``find_token``) and
sent; a missing or refused token is one ``SubmitError`` saying how to provide it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.spec import SpecError, load_spec

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXCLUDES = [".venv/", "venv/", "out/", "runs/", ".git/", "**/__pycache__/", "*.egg-info/",
            ".pytest_cache/", ".ruff_cache/", ".whl/", ".gl/", "deploy/"]
ENV = {"PYTHONUNBUFFERED": "1", "TRANSFORMERS_VERBOSITY": "error"}
# What the head's `python` must import to run a job: pyproject's dependencies by import
# name (tests/pipeline/executor/test_submit.py keeps the two in step), and the project itself.
REQUIRED = ("torch", "transformers", "safetensors", "diffusers", "accelerate", "ray",
            "pyarrow", "fsspec", "s3fs", "pydantic", "yaml", "PIL", "simplejpeg", "numpy",
            "tqdm", "pandas", "imagehash", "pipeline")
# Runs first on the head with the standard library only (no quotes inside, so that the
# entrypoint stays readable in `ray job list`).
PREFLIGHT = """import importlib.util as u, sys
missing = [m for m in "{modules}".split() if u.find_spec(m) is None]
missing = (["Python >= 3.10"] if sys.version_info < (3, 10) else []) + missing
if missing:
    sys.exit("synthset: " + sys.executable + " (Python " + sys.version.split()[0] + ") "
             "cannot run this job, it lacks " + ", ".join(missing) + ": put the environment "
             "with the project installed first on PATH on every node (see docs/operations.md)")
"""
TOKEN_HELP = ("provide the cluster's token in $RAY_AUTH_TOKEN, in a file named by "
              "$RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token (`ray get-auth-token` on the head "
              "prints it; on KubeRay it is the auth_token key of the cluster's Secret); "
              "see docs/operations.md")


class SubmitError(RuntimeError):
    """The Ray Jobs API could not be reached or refused the request."""


def default_working_dir() -> str | None:
    """The project checkout this code runs from, or None when installed as a package."""
    has_project = os.path.isfile(os.path.join(PROJECT, "pyproject.toml"))
    return PROJECT if has_project else None


def build_submission(job: str, overrides: list[str], date: str,
                     working_dir: str | None) -> dict[str, Any]:
    """The ``submit_job`` arguments for one job file; validates the spec locally first."""
    spec = load_spec(job, overrides, date)
    path = job
    if working_dir is not None:
        path = os.path.relpath(os.path.abspath(job), os.path.abspath(working_dir))
        if path.startswith(".."):
            raise SpecError(f"{job} is outside the working dir {working_dir}, so it would not "
                            "travel with the job; move it under jobs/ or pass --working-dir")
    command = ["python", "-m", "pipeline.cli", "-v", "run", path, "--date", date, "--quiet"]
    for assignment in overrides:
        command += ["--set", assignment]
    check = ["python", "-c", PREFLIGHT.format(modules=" ".join(REQUIRED))]
    runtime_env: dict[str, Any] = {"env_vars": dict(ENV)}
    if working_dir is not None:
        runtime_env.update(working_dir=os.path.abspath(working_dir), excludes=EXCLUDES)
    slug = re.sub(r"[^a-z0-9-]+", "-", spec.name.lower()).strip("-")[:40] or "job"
    return {"entrypoint": f"{shlex.join(check)} && {shlex.join(command)}",
            "runtime_env": runtime_env,
            "submission_id": f"synthset-{slug}-{date}-{uuid.uuid4().hex[:6]}",
            "metadata": {"synthset_job": path, "date": date, "output": spec.output.path}}


def find_token() -> tuple[str | None, str]:
    """Ray's auth token, looked up as Ray does: ``(token or None, where it was looked for)``.

    ``$RAY_AUTH_TOKEN`` first, then the file named by ``$RAY_AUTH_TOKEN_PATH``, then
    ``~/.ray/auth_token``. Like Ray, a source that is set but blank or unreadable ends the
    search: a misconfiguration is reported, not papered over by a stale file.
    """
    if os.environ.get("RAY_AUTH_TOKEN"):
        token = os.environ["RAY_AUTH_TOKEN"].strip()
        return token or None, "$RAY_AUTH_TOKEN" if token else "$RAY_AUTH_TOKEN (blank)"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    try:
        with open(path or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")) as f:
            token = f.read().strip()
    except OSError:
        token = ""
    if path:
        return token or None, f"$RAY_AUTH_TOKEN_PATH ({path})"
    if token:
        return token, "~/.ray/auth_token"
    return None, "$RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"


def _no_token(where: str, looked: str) -> SubmitError:
    return SubmitError(f"the Ray cluster at {where} requires a token (token authentication "
                       f"is on) and none was found in {looked}: {TOKEN_HELP}")


def _refused(where: str, looked: str) -> SubmitError:
    return SubmitError(f"the Ray cluster at {where} refused the token from {looked}: "
                       f"{TOKEN_HELP}")


def _unreachable(where: str, e: Exception) -> SubmitError:
    first = str(e).splitlines()[0] if str(e) else ""
    return SubmitError(f"cannot reach the Ray Jobs API at {where}: {type(e).__name__}: {first}")


def client(address: str | None):
    """A JobSubmissionClient for ``address`` (default: $RAY_ADDRESS), with the cluster's
    token when the head asks for one."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    where = address or os.environ.get("RAY_ADDRESS") or "$RAY_ADDRESS"
    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        pass  # the head wants a token (Ray sends one itself only if RAY_AUTH_MODE=token)
    except Exception as e:  # connection refused, wrong port: both need a human
        raise _unreachable(where, e) from None
    token, looked = find_token()
    if token is None:
        raise _no_token(where, looked)
    try:
        return JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    except AuthenticationError:
        raise _refused(where, looked) from None
    except Exception as e:
        raise _unreachable(where, e) from None


@contextlib.contextmanager
def _answered(address: str | None) -> Iterator[None]:
    """A refused token (rotated while we tail the logs) or a refused request (no such job)
    becomes a SubmitError: both need a human, neither a traceback."""
    from ray.exceptions import AuthenticationError

    where = address or os.environ.get("RAY_ADDRESS") or "$RAY_ADDRESS"
    try:
        yield
    except AuthenticationError:
        raise _refused(where, find_token()[1]) from None
    except RuntimeError as e:
        if not str(e).startswith("Request failed with status code"):
            raise
        answer = str(e).split(": ", 1)[-1].rstrip(".")
        raise SubmitError(f"the Ray Jobs API at {where} answered: {answer}") from None


def submit(job: str, address: str | None, overrides: list[str], date: str,
           working_dir: str | None) -> str:
    """Submit one job file; returns the Ray job (submission) id."""
    submission = build_submission(job, overrides, date, working_dir)
    c = client(address)
    try:
        with _answered(address):
            return c.submit_job(**submission)
    except SubmitError:
        raise
    except Exception as e:
        raise SubmitError(f"submitting {job} failed: {type(e).__name__}: {e}") from None


def follow_logs(job_id: str, address: str | None, write: Callable[[str], Any],
                follow: bool = True) -> str:
    """Write the job's logs (as they come, if ``follow``); returns its status."""
    c = client(address)
    with _answered(address):
        if not follow:
            write(c.get_job_logs(job_id))
            return c.get_job_status(job_id).value

        async def tail() -> None:
            async for lines in c.tail_job_logs(job_id):
                write(lines)

        asyncio.run(tail())
        return c.get_job_status(job_id).value


def status(job_id: str, address: str | None) -> str:
    """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    c = client(address)
    with _answered(address):
        return c.get_job_status(job_id).value


def stop(job_id: str, address: str | None) -> bool:
    """Ask Ray to stop the job; False if it had already finished."""
    c = client(address)
    with _answered(address):
        return c.stop_job(job_id)


def prepare_driver(address: str | None) -> None:
    """Before ``ray.init(address)`` (``run --address``): turn Ray's token mode on when the
    cluster's GCS asks for a token, or raise a SubmitError saying how to provide one.

    Ray does this by itself only for a local cluster it finds ("auto"); against an explicit
    address an unauthenticated driver retries for ~20 s, then reports a lost connection.
    Addresses other than host:port (auto, ray://) are left to Ray.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or not _HOST_PORT.match(address) or not _gcs_refuses(address):
        return
    token, looked = find_token()
    if token is None:
        raise _no_token(address, looked)
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ["RAY_AUTH_MODE"] = "token"  # read by ray.init and inherited by its children
    Config.initialize("")  # what Ray's own switch does: the mode is cached at import
    AuthenticationTokenLoader.instance().reset_cache()
    if _gcs_refuses(address):
        raise _refused(address, looked)


PROBE_S = 5.0
_HOST_PORT = re.compile(r"^\[?[\w.:-]+\]?:\d+$")


def _gcs_refuses(address: str) -> bool:
    """Whether the GCS at host:port turns this process away for want of a (valid) token."""
    from ray._raylet import GcsClient  # the one quick way to ask: ray.init retries ~20 s
    from ray.exceptions import AuthenticationError

    host, port = address.rsplit(":", 1)
    try:  # nothing listening: ray.init reports that in its own words
        socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
    except OSError:
        return False
    refused: list[bool] = []

    def probe() -> None:
        try:
            GcsClient(address=address)
        except AuthenticationError:
            refused.append(True)
        except Exception:  # anything else is ray.init's to report
            pass

    # A GCS answers in milliseconds; something else on that port (the dashboard's, say)
    # would hold GcsClient for 40 s, so the probe gets a few seconds and then ray.init.
    with _quiet_stderr():
        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        thread.join(PROBE_S)
    return bool(refused)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Ray's C++ client logs a refused probe straight to fd 2; the user gets our one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
