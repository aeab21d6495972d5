"""Shared fixtures: one real local Ray per module, a moto S3 server on 127.0.0.1, tiny models."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parent.parent  # the repository root

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing-key-id")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)


def _ensure_ray_token() -> None:
    """Give Ray's default token file (~/.ray/auth_token) a token before any Ray starts.

    Ray >= 2.59 writes one on a machine's first local ``ray.init`` if none exists; two test
    workers (pytest-xdist) starting their Rays at once on a fresh machine would each write
    their own, and one cluster would then hold a token its file no longer says. One
    atomic link decides which token every worker uses.
    """
    import secrets
    import tempfile

    path = Path.home() / ".ray" / "auth_token"
    if path.exists() or os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as f:
        f.write(secrets.token_hex(32))
    try:
        os.link(f.name, path)  # fails if another worker's token got there first
    except OSError:  # that, or a file system without hard links: Ray then writes its own
        pass
    finally:
        os.unlink(f.name)


_ensure_ray_token()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray with 2 CPUs. One instance serves every module that asks for it, in
    turn (a start costs ~7 s on 2 cores); a module that needs a cluster of its own calls
    ``release_shared_ray`` first, and the next module that asks starts a fresh one."""
    import ray

    if not ray.is_initialized():
        # "local": a new instance even when another run's Ray is up on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray


def release_shared_ray() -> None:
    """Stop the shared local Ray (if up) so that a module can start its own cluster."""
    import ray

    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _ray_down_at_the_end():
    yield
    import sys

    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API (moto) on loopback, as s3fs's own test-suite runs it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket and the storage_options that reach it."""
    import uuid

    import s3fs

    name = f"bkt-{uuid.uuid4().hex[:8]}"
    options = {"endpoint_url": s3_endpoint}
    s3fs.S3FileSystem(**options).mkdir(name)
    return name, options


@pytest.fixture(scope="session")
def tiny_gan(tmp_path_factory) -> str:
    """A random-weight tiny GAN saved and reloaded through save/from_pretrained."""
    from models.gan import GanConfig, GanImageModel

    path = str(tmp_path_factory.mktemp("models") / "tiny-gan")
    GanImageModel.from_config(GanConfig.tiny(), seed=0).save_pretrained(path)
    return path


def write_prompts(path, prompts, row_group_size=None, **columns) -> str:
    """A real Parquet file of prompts (plus any extra columns)."""
    table = pa.table({"prompt": pa.array(prompts, pa.string()), **columns})
    pq.write_table(table, str(path), row_group_size=row_group_size)
    return str(path)
