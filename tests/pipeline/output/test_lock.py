"""The run lock on local files and on S3 (moto): exclusive create, heartbeat, stale takeover."""

import json
import threading
import time

import pytest

from pipeline.output.layout import lock_name
from pipeline.output.lock import LockHeld, LockLost, RunLock
from pipeline.output.storage import OutputFolder, StorageError


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path):
    if request.param == "local":
        return OutputFolder(str(tmp_path / "out"))
    bucket, options = request.getfixturevalue("s3_bucket")
    return OutputFolder(f"s3://{bucket}/run", options)


def _write_lock(folder, generation, heartbeat_age_s, owner="crashed"):
    folder.write_json(lock_name(generation), {
        "owner": owner, "run": "old", "host": "elsewhere", "pid": 1,
        "heartbeat_at": time.time() - heartbeat_age_s})


def test_second_run_is_refused_until_the_first_releases(folder):
    first = RunLock(folder, timeout_s=60, run="a")
    with first:
        assert folder.list("_lock.") == [lock_name(0)]
        assert json.loads(folder.read_bytes(lock_name(0)))["owner"] == first.token
        with pytest.raises(LockHeld, match="being written by run 'a'"):
            RunLock(folder, timeout_s=60).acquire()
    assert folder.list("_lock.") == []
    with RunLock(folder, timeout_s=60):
        pass


def test_exclusive_create_refuses_an_existing_object(folder):
    folder.create_or_fail("x.json", b"1")
    with pytest.raises(StorageError) as refused:
        folder.create_or_fail("x.json", b"2")
    assert isinstance(refused.value.__cause__, FileExistsError)
    assert folder.read_bytes("x.json") == b"1"
    assert folder.list() == ["x.json"]  # no temp file left beside it


def test_stale_lock_is_taken_over_and_the_old_holder_learns_it(folder):
    _write_lock(folder, 0, heartbeat_age_s=120)
    with RunLock(folder, timeout_s=60) as lock:
        assert lock.generation == 1 and folder.list("_lock.") == [lock_name(1)]
    assert folder.list("_lock.") == []
    slow = RunLock(folder, timeout_s=60)
    slow.acquire()
    slow._stop.set()  # a run that stalls: no more heartbeats, its last one now looks old
    folder.write_json(lock_name(0), {**json.loads(folder.read_bytes(lock_name(0))),
                                     "heartbeat_at": time.time() - 120})
    with RunLock(folder, timeout_s=60):
        with pytest.raises(LockLost):
            slow.check()
        slow.release()  # must not delete the new holder's lock
        assert folder.list("_lock.") == [lock_name(1)]


def test_a_retried_create_recognises_its_own_lock(folder):
    lock = RunLock(folder, timeout_s=60)
    folder.create_or_fail(lock_name(0), json.dumps({"owner": lock.token}).encode())
    assert lock._create(0)  # FileExistsError, but the object is ours
    assert not RunLock(folder, timeout_s=60)._create(0)


def test_heartbeat_keeps_a_long_run_fresh(tmp_path):
    folder = OutputFolder(str(tmp_path / "out"))
    with RunLock(folder, timeout_s=0.4):
        time.sleep(1.0)
        with pytest.raises(LockHeld):
            RunLock(folder, timeout_s=0.4).acquire()


def test_racing_takeovers_have_one_winner(tmp_path):
    folder = OutputFolder(str(tmp_path / "out"))
    _write_lock(folder, 0, heartbeat_age_s=120)
    outcomes, winners, barrier = [], [], threading.Barrier(4)

    def contend():
        lock = RunLock(folder, timeout_s=60)
        barrier.wait()
        try:
            lock.acquire()
            outcomes.append("won")
            winners.append(lock)
        except LockHeld:
            outcomes.append("held")

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["held", "held", "held", "won"]
    winners[0].release()
