"""Cluster submission through the Ray Jobs API: submit a job file, follow its logs, stop it.

What travels with a submission (the runtime_env):

* ``working_dir``: the project checkout (code, ``jobs/``, the shipped weights under
  ``models/weights``), minus virtualenvs, outputs and caches. Ray caps a working_dir at
  a few hundred MiB; larger models belong in the image or on object storage.
  ``working_dir=None`` submits nothing: the cluster image already has the project.
* the job file by its path inside the working_dir, with ``--set`` overrides and the run
  date pinned on the command line, so the cluster's clock and time zone don't matter.

Dependencies (torch, ray, ...) are not shipped: the cluster's image must have them.
Credentials are never shipped either: nodes get them from their environment or role.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import uuid
from collections.abc import Callable
from typing import Any

from pipeline.spec import SpecError, load_spec

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXCLUDES = [".venv/", "venv/", "out/", "runs/", ".git/", "**/__pycache__/", "*.egg-info/",
            ".pytest_cache/", ".ruff_cache/", ".whl/", ".gl/", "deploy/"]
ENV = {"PYTHONUNBUFFERED": "1", "TRANSFORMERS_VERBOSITY": "error"}


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
    runtime_env: dict[str, Any] = {"env_vars": dict(ENV)}
    if working_dir is not None:
        runtime_env.update(working_dir=os.path.abspath(working_dir), excludes=EXCLUDES)
    slug = re.sub(r"[^a-z0-9-]+", "-", spec.name.lower()).strip("-")[:40] or "job"
    return {"entrypoint": shlex.join(command), "runtime_env": runtime_env,
            "submission_id": f"synthset-{slug}-{date}-{uuid.uuid4().hex[:6]}",
            "metadata": {"synthset_job": path, "date": date, "output": spec.output.path}}


def client(address: str | None):
    """A JobSubmissionClient for ``address`` (default: $RAY_ADDRESS)."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # connection refused, wrong port, auth: all need a human
        raise SubmitError(f"cannot reach the Ray Jobs API at {address or '$RAY_ADDRESS'}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                          ) from None


def submit(job: str, address: str | None, overrides: list[str], date: str,
           working_dir: str | None) -> str:
    """Submit one job file; returns the Ray job (submission) id."""
    submission = build_submission(job, overrides, date, working_dir)
    try:
        return client(address).submit_job(**submission)
    except SubmitError:
        raise
    except Exception as e:
        raise SubmitError(f"submitting {job} failed: {type(e).__name__}: {e}") from None


def follow_logs(job_id: str, address: str | None, write: Callable[[str], Any],
                follow: bool = True) -> str:
    """Write the job's logs (as they come, if ``follow``); returns its status."""
    c = client(address)
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
    return client(address).get_job_status(job_id).value


def stop(job_id: str, address: str | None) -> bool:
    """Ask Ray to stop the job; False if it had already finished."""
    return client(address).stop_job(job_id)
