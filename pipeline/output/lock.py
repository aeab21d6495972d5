"""One run at a time per output folder: a lock object created exclusively, with a heartbeat.

Protocol (works on any store with exclusive create; on S3 that is ``If-None-Match: *``):

* Lock objects are ``_lock.GGGGGG.json``; the highest generation G is the lock.
* Acquire: with no lock object, create generation 0 exclusively. A lock whose heartbeat
  is younger than ``timeout_s`` is held: refuse. An older one is stale: create generation
  G+1 exclusively, so of two runs taking over at once exactly one wins.
* While held, a thread rewrites the heartbeat every ``timeout_s / 4``. A run that finds a
  higher generation than its own has been taken over (it stalled past the timeout): it
  stops heartbeating and :meth:`RunLock.check` fails it before it writes ``_SUCCESS``.
* Release deletes the run's lock object and any older generation.

Heartbeats compare wall clocks of different machines: keep them NTP-synced, and keep
``timeout_s`` (``runtime.lock_timeout_s``) at minutes, not seconds, in production.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from pipeline.output.layout import LOCK_PREFIX, lock_name
from pipeline.output.storage import OutputFolder, StorageError

log = logging.getLogger("synthset")


class LockHeld(RuntimeError):
    """Another live run holds the output folder's lock."""


class LockLost(RuntimeError):
    """This run's lock was taken over by another run after its heartbeat went stale."""


_HELD: set[str] = set()  # tokens of the locks this process holds right now


class RunLock:
    """The output folder's run lock; use as a context manager around a run."""

    def __init__(self, folder: OutputFolder, timeout_s: float, run: str = ""):
        self.folder, self.timeout_s, self.run = folder, timeout_s, run
        self.token = uuid.uuid4().hex
        self.generation: int | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.acquired_at = 0.0

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self.release()
        except StorageError as e:
            if exc_type is None:
                raise
            # the store is failing: don't hide the error that ended the run (JobFailed)
            log.warning("could not release the lock of %s: %s", self.folder.display(), e)

    def _info(self) -> dict:
        return {"owner": self.token, "run": self.run, "host": socket.gethostname(),
                "pid": os.getpid(), "generation": self.generation,
                "acquired_at": self.acquired_at, "heartbeat_at": time.time()}

    def _generations(self) -> list[int]:
        names = self.folder.list(LOCK_PREFIX)
        return sorted(int(n[len(LOCK_PREFIX):-len(".json")]) for n in names
                      if n[len(LOCK_PREFIX):-len(".json")].isdigit())

    def acquire(self) -> None:
        """Take the lock, taking over a stale one; raise LockHeld if a live run holds it."""
        for _ in range(5):
            generations = self._generations()
            generation = generations[-1] + 1 if generations else 0
            if generations:
                holder = self._read(lock_name(generations[-1]))
                if holder is None:
                    continue  # released while we looked
                if not self._stale(holder):
                    _HELD.discard(self.token)
                    raise LockHeld(self._held_message(holder))
                log.warning("taking over the stale lock of %s (run %s on %s, pid %s)",
                            self.folder.display(), holder.get("run"), holder.get("host"),
                            holder.get("pid"))
            _HELD.add(self.token)  # before the object exists: same-process readers see it live
            if self._create(generation):
                self._start_heartbeat()
                self._delete_below(generation)
                return
        _HELD.discard(self.token)
        raise LockHeld(f"{self.folder.display()}: could not take the run lock; another run "
                       "keeps taking it")

    def _read(self, name: str) -> dict | None:
        try:
            return self.folder.read_json(name)
        except ValueError:  # being written right now (local files): a live holder
            return {"heartbeat_at": time.time()}

    def _stale(self, holder: dict) -> bool:
        if _dead_on_this_host(holder):
            return True  # a crashed driver here: resume at once, not after the timeout
        return time.time() - float(holder.get("heartbeat_at") or 0) > self.timeout_s

    def _held_message(self, holder: dict) -> str:
        age = time.time() - float(holder.get("heartbeat_at") or 0)
        return (f"{self.folder.display()} is being written by run {holder.get('run')!r} on "
                f"{holder.get('host')} (pid {holder.get('pid')}), last heartbeat {age:.0f} s "
                f"ago. It can be taken over once the heartbeat is {self.timeout_s:.0f} s old "
                "(runtime.lock_timeout_s); meanwhile `synthset status` shows its progress.")

    def _create(self, generation: int) -> bool:
        """Exclusively create our lock object; False if another run created it first."""
        self.generation, self.acquired_at = generation, time.time()
        name = lock_name(generation)
        data = json.dumps(self._info(), indent=1).encode()
        try:
            self.folder.create_or_fail(name, data)
            return True
        except StorageError as e:
            if not isinstance(e.__cause__, FileExistsError):
                raise
        # A retried request can find its own first attempt: check whose lock it is.
        return (self._read(name) or {}).get("owner") == self.token

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="synthset-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout_s / 4):
            try:
                self.refresh()
            except StorageError as e:  # a missed beat is not fatal; the next one may land
                log.warning("lock heartbeat failed: %s", e)
            if self.lost:
                return

    def refresh(self) -> None:
        """Rewrite the heartbeat (and re-create the object after ``--overwrite``)."""
        if self.generation is None or self.lost:
            return
        if self._generations()[-1:] > [self.generation]:
            self.lost = True
            log.error("run lock of %s was taken over by another run", self.folder.display())
            return
        self.folder.write_json(lock_name(self.generation), self._info())

    def check(self) -> None:
        """Raise LockLost if another run took the lock over."""
        if self.lost or self._generations()[-1:] > [self.generation]:
            self.lost = True
            raise LockLost(f"another run took over the lock of {self.folder.display()} (this "
                           "run's heartbeat went stale); it carries on from the committed "
                           "shards, so this run stops without writing _SUCCESS")

    def release(self) -> None:
        """Stop the heartbeat and delete our lock object (unless it was taken over)."""
        _HELD.discard(self.token)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.generation is not None and not self.lost:
            self._delete_below(self.generation + 1)
        self.generation = None

    def _delete_below(self, generation: int) -> None:
        for g in self._generations():
            if g < generation:
                self.folder.delete(lock_name(g))


def _dead_on_this_host(holder: dict) -> bool:
    """The holder ran on this machine and is gone: its process died (killed, crashed), or it
    was this process and its run has ended without deleting the lock (a storage outage)."""
    if holder.get("host") != socket.gethostname() or not holder.get("pid"):
        return False
    if int(holder["pid"]) == os.getpid():
        return holder.get("owner") not in _HELD
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False
