"""The storage layer on its own: error classes, one retry owner, atomic and exclusive writes."""

import io
import os
import threading

import pyarrow as pa
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, ReadTimeoutError

from pipeline.output import storage
from pipeline.output.formats.base import commit_marker
from pipeline.output.formats.files import FilesShardWriter
from pipeline.output.layout import marker_name
from pipeline.output.storage import OutputFolder, StorageError, open_input_fs
from pipeline.output.storage_errors import is_transient
from tests.faultproxy import FaultProxy


def _client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def _as_s3fs(error: Exception, wrapper: type = OSError) -> Exception:
    wrapped = wrapper(5, "wrapped") if wrapper is OSError else wrapper("wrapped")
    wrapped.__cause__ = error  # s3fs translates ClientError and keeps it as the cause
    return wrapped


@pytest.mark.parametrize("error", [
    _client_error(500, "InternalError"), _client_error(502, "BadGateway"),
    _client_error(503, "SlowDown"), _client_error(504, "GatewayTimeout"),
    _client_error(429, "TooManyRequests"), _as_s3fs(_client_error(503, "SlowDown")),
    ConnectionClosedError(endpoint_url="http://x"), ReadTimeoutError(endpoint_url="http://x"),
    ConnectionResetError(104, "reset"), TimeoutError("timed out"),
])
def test_transient_errors_are_retried(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    _as_s3fs(_client_error(403, "AccessDenied"), PermissionError),
    _as_s3fs(_client_error(404, "NoSuchKey"), FileNotFoundError),
    _as_s3fs(_client_error(404, "NoSuchBucket"), FileNotFoundError),
    _as_s3fs(_client_error(403, "InvalidAccessKeyId"), PermissionError),
    _as_s3fs(_client_error(400, "InvalidRequest")),  # s3fs: OSError(EIO), still permanent
    ValueError("bad"), FileExistsError("exists"),
])
def test_permanent_errors_are_not(error):
    assert not is_transient(error)


def test_retries_back_off_with_jitter_and_count_across_threads(tmp_path, monkeypatch):
    sleeps = []
    monkeypatch.setattr(storage.time, "sleep", sleeps.append)
    folder = OutputFolder(str(tmp_path), retries=4, backoff_s=1.0, max_backoff_s=3.0)
    failures = threading.local()

    def flaky():
        failures.n = getattr(failures, "n", 0) + 1
        if failures.n <= 3:
            raise ConnectionResetError(104, "reset")
        return "ok"
    threads = [threading.Thread(target=folder.call, args=("writing", "x", flaky))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert folder.retry_count == 24
    # backoff 1, 2, 4 capped at 3, each scaled by a jitter in [0.5, 1]
    assert len(sleeps) == 24 and 0.5 <= min(sleeps) and max(sleeps) <= 3.0
    assert sum(s <= 1.0 for s in sleeps) >= 8 and sum(s >= 1.5 for s in sleeps) >= 8
    with pytest.raises(StorageError, match=r"writing .*/x failed after 5 attempts: "
                                           r"ConnectionResetError"):
        folder.call("writing", "x", lambda: (_ for _ in ()).throw(ConnectionResetError(104, "r")))


@pytest.fixture
def proxy(s3_endpoint):
    p = FaultProxy(s3_endpoint)
    yield p
    p.close()


def test_one_retry_layer_s3fs_and_botocore_loops_are_off(s3_bucket, proxy, monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    bucket, _ = s3_bucket
    options = {"endpoint_url": proxy.url}
    folder = OutputFolder(f"s3://{bucket}/out", options, retries=2)
    assert folder.fs.retries == 1
    for fault in ("503", "500", "reset"):
        proxy.outage, proxy.requests = fault, 0
        with pytest.raises(StorageError, match=f"s3://{bucket}/out/a.bin failed after 3 attempts"):
            folder.write_bytes("a.bin", b"x")
        # ours only: no s3fs loop, no botocore retries. aiohttp resends an idempotent request
        # once when a reused keep-alive connection drops (RFC 9112), hence up to 6 on resets.
        assert proxy.requests == 3 if fault != "reset" else 3 <= proxy.requests <= 6, fault
    # input reads: botocore's standard mode owns retries, with the same count
    proxy.outage, proxy.requests = "503", 0
    fs, path = open_input_fs(f"s3://{bucket}/out/a.bin", options, retries=2)
    with pytest.raises(OSError):
        fs.cat_file(path)
    assert proxy.requests == 3 and fs.retries == 1


def test_permanent_errors_fail_fast_naming_url_not_secret(s3_bucket, proxy):
    bucket, _ = s3_bucket
    options = {"endpoint_url": proxy.url, "key": "AKIDEXAMPLE", "secret": "s3cr3t-value"}
    folder = OutputFolder(f"s3://{bucket}/out", options, retries=5)
    proxy.outage = "403"
    with pytest.raises(StorageError) as e:
        folder.write_bytes("a.bin", b"x")
    assert proxy.requests == 1
    text = str(e.value)
    assert f"writing s3://{bucket}/out/a.bin failed (permanent error, not retried)" in text
    assert "PermissionError: Access Denied" in text and "s3cr3t" not in text
    proxy.outage = None
    missing = OutputFolder("s3://no-such-bucket-here/out", {"endpoint_url": proxy.url})
    with pytest.raises(StorageError, match="s3://no-such-bucket-here/out/a.bin failed .*"
                                           "FileNotFoundError"):
        missing.write_bytes("a.bin", b"x")


def test_exclusive_create_recognises_our_own_lost_write(s3_bucket, proxy, monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    bucket, _ = s3_bucket
    folder = OutputFolder(f"s3://{bucket}/out", {"endpoint_url": proxy.url})
    stats = {"objects": {"00000.tar": "ab"}, "count": 1}
    proxy.script = ["lost"]  # the PUT lands, its response does not; the retry meets our object
    assert commit_marker(folder, "00000", stats) == stats
    # the resend (aiohttp's or ours) got 412 Precondition Failed and found our own bytes
    assert proxy.faults["lost"] == 1 and folder.read_json(marker_name("00000")) == stats
    # an earlier attempt committed the same data: keep its marker
    assert commit_marker(folder, "00000", {**stats, "count": 1, "t": 2}) == stats
    with pytest.raises(StorageError, match="created by another attempt"):
        commit_marker(folder, "00000", {**stats, "objects": {"00000.tar": "cd"}})


def test_local_writes_are_atomic_and_exclusive(tmp_path, monkeypatch):
    folder = OutputFolder(str(tmp_path / "out"))
    folder.write_bytes("a/b.bin", b"1")
    assert folder.create_bytes("m.json", b"first") is None
    assert folder.create_bytes("m.json", b"second") == b"first"

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(storage.os, "replace", broken_replace)
    with pytest.raises(StorageError):
        folder.write_bytes("c.bin", b"2")
    assert sorted(folder.find()) == ["a/b.bin", "m.json"]  # no partial file, no temp left


class _BreaksHalfway(io.BytesIO):
    def read(self, n=-1):
        if self.tell() > 2**20:
            raise ConnectionResetError(104, "source went away")
        return super().read(min(n, 2**20) if n and n > 0 else 2**20)


def test_streamed_upload_never_leaves_a_partial_object(s3_bucket, monkeypatch):
    bucket, options = s3_bucket
    monkeypatch.setattr(storage, "ONE_PUT_MAX_BYTES", 2**20)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    folder = OutputFolder(f"s3://{bucket}/out", options, retries=1)
    data = os.urandom(3 * 2**20)
    folder.write_file("big.tar", io.BytesIO(data))
    assert folder.read_bytes("big.tar") == data
    with pytest.raises(StorageError, match="after 2 attempts"):
        folder.write_file("broken.tar", _BreaksHalfway(data))
    assert "broken.tar" not in folder.find()


def test_writer_never_overwrites_a_committed_shard(tmp_path):
    folder = OutputFolder(str(tmp_path))
    writer = FilesShardWriter(folder, "00000", "png")
    writer.put_image("000000000", b"first")
    stats = writer.commit(pa.table({"key": ["000000000"]}), {"count": 1})
    assert set(stats["objects"]) == {"00000.parquet"} and stats["uploads"]["objects"] == 2
    again = FilesShardWriter(folder, "00000", "png")  # a resubmit after a lost result
    again.put_image("000000000", b"second")
    assert again.commit(pa.table({"key": ["x"]}), {"count": 9}) == stats
    assert (tmp_path / "00000" / "000000000.png").read_bytes() == b"first"
    assert folder.read_json(marker_name("00000")) == stats


def test_exclusive_create_falls_back_where_conditional_writes_are_unsupported(
        s3_bucket, monkeypatch):
    """An S3-compatible store that answers 501 to If-None-Match gets check-then-put: still
    refuses an existing object, and says so once."""
    from botocore.exceptions import ClientError

    bucket, options = s3_bucket
    folder = OutputFolder(f"s3://{bucket}/run", options)
    real_pipe = folder.fs.pipe_file
    sent = []

    def no_conditional_writes(path, data, **kwargs):
        sent.append(kwargs.get("mode"))
        if kwargs.get("mode") == "create":
            raise ClientError({"Error": {"Code": "NotImplemented", "Message": "If-None-Match"},
                               "ResponseMetadata": {"HTTPStatusCode": 501}}, "PutObject")
        return real_pipe(path, data, **kwargs)

    monkeypatch.setattr(folder.fs, "pipe_file", no_conditional_writes)
    assert folder.create_bytes("m.json", b"1") is None
    assert folder.create_bytes("m.json", b"2") == b"1"  # refused: the existing content
    assert folder.read_bytes("m.json") == b"1"
    assert sent == ["create", None] and not folder.conditional_writes  # asked once, then not
