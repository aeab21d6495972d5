"""Live progress: the driver's bar, ``_progress.json``, and status read back from storage."""

from __future__ import annotations

import logging
import time
from typing import Any

from tqdm import tqdm

from pipeline.output.layout import JOB, PROGRESS, SUCCESS, shard_of_marker
from pipeline.output.manifest import Ledger, shards_committed
from pipeline.output.storage import OutputFolder, StorageError

log = logging.getLogger("synthset")


class Progress:
    """Counts images and shards as they finish; flushes ``_progress.json`` periodically."""

    def __init__(self, folder: OutputFolder, fingerprint: str, shards_total: int,
                 images_total: int, per_prompt: int, ledger: Ledger, earlier_images: int = 0,
                 interval_s: float = 2.0, show_bar: bool = True):
        self.folder, self.fingerprint, self.interval_s = folder, fingerprint, interval_s
        self.shards_total, self.images_total, self.per_prompt = shards_total, images_total, \
            per_prompt
        # Shards committed by earlier runs count at once; their success/failure split
        # is summed as the ledger reads their markers back (a resume lists names only).
        self.ledger = ledger
        self.shards_done = ledger.earlier
        self.shards_failed = 0
        self.run_done = self.run_failed = 0  # images of the shards this run committed
        self._live = 0  # images counted from per-batch reports of shards still running
        self._base = earlier_images  # images (done or failed) of earlier runs' shards
        self.started = time.time()
        self.last_commit_at: float | None = None  # when the driver learnt of the last commit
        self._flushed = 0.0
        self.waiting: str | None = None  # why no actor is running yet (capacity)
        self.bar = tqdm(total=images_total // per_prompt, unit="prompt", disable=not show_bar,
                        initial=self._base // per_prompt, dynamic_ncols=True, smoothing=0.1)

    def images(self, done: int, failed: int) -> None:
        """Per-batch counts from running shards (for the bar only)."""
        self._live += done + failed
        self._refresh()

    def shard_done(self, stats: dict) -> None:
        self.last_commit_at = time.time()
        self.ledger.add(stats)
        self.shards_done += 1
        self.run_done += stats["successes"]
        self.run_failed += stats["failed"]
        self._refresh()

    def shard_failed(self, shard_id: int) -> None:
        self.shards_failed += 1
        self._refresh()

    @property
    def images_done(self) -> int:
        return self.run_done + self.ledger.earlier_done

    @property
    def images_failed(self) -> int:
        return self.run_failed + self.ledger.earlier_failed

    def _counted(self) -> int:
        committed = self._base + self.run_done + self.run_failed
        return min(self.images_total, max(committed, self._base + self._live))

    def _refresh(self) -> None:
        n = self._counted() // self.per_prompt
        self.bar.update(max(0, n - self.bar.n))
        self.bar.set_postfix(failed=self.images_failed, shards=f"{self.shards_done}/"
                             f"{self.shards_total}", refresh=False)
        if time.time() - self._flushed >= self.interval_s:
            self.flush("running")

    def snapshot(self, state: str) -> dict[str, Any]:
        elapsed = max(time.time() - self.started, 1e-9)
        rate = (self._counted() - self._base) / elapsed
        remaining = self.images_total - self._counted()
        return {
            "state": state, "fingerprint": self.fingerprint,
            "shards_total": self.shards_total, "shards_done": self.shards_done,
            "shards_failed": self.shards_failed,
            "images_total": self.images_total, "images_done": self.images_done,
            "images_failed": self.images_failed, "images_counted": self._counted(),
            "images_per_s": round(rate, 3),
            "eta_s": round(remaining / rate, 1) if rate > 0 and state == "running" else None,
            "started_at": self.started, "updated_at": time.time(),
            "last_commit_at": self.last_commit_at,
            "elapsed_s": round(elapsed, 3),
            "waiting": self.waiting,
        }

    def wait_note(self, text: str | None) -> None:
        """Say why actors are not running (``None`` once they are); shown by status."""
        if text != self.waiting:
            self.waiting = text
            self.bar.set_description_str((text or "")[:60], refresh=False)
            if text:
                log.warning("%s", text)
            self.flush("running")

    def flush(self, state: str) -> None:
        """Write ``_progress.json``; it is advisory, so a storage outage only logs."""
        self._flushed = time.time()
        try:
            self.folder.write_json(PROGRESS, self.snapshot(state))
        except StorageError as e:
            log.warning("progress not saved: %s", e)

    def close(self, state: str) -> None:
        self.flush(state)
        self.bar.close()


def committed_shards(folder: OutputFolder) -> list[str]:
    """Names of shards whose marker exists."""
    return [shard for n in folder.list() if (shard := shard_of_marker(n)) is not None]


def read_status(folder: OutputFolder) -> dict[str, Any]:
    """A job's progress from storage alone: works while it runs and after it ends."""
    job = folder.read_json(JOB)
    if job is None:
        raise FileNotFoundError(f"{folder.display()} holds no synthset job ({JOB} missing)")
    progress = folder.read_json(PROGRESS) or {}
    success = folder.read_json(SUCCESS)
    shards_total = job["plan"]["shards"]
    # a complete job's count is in _SUCCESS: no listing of every object
    done = shards_committed(success) if success else len(committed_shards(folder))
    status = {
        "output": folder.display(), "name": job["spec"]["name"],
        "fingerprint": job["fingerprint"],
        "state": "complete" if success else progress.get("state", "pending"),
        "shards_total": shards_total, "shards_done": done,
        "prompts_total": job["plan"]["prompts"], "images_total": job["plan"]["images"],
    }
    for key in ("images_done", "images_failed", "images_per_s", "eta_s", "updated_at",
                "elapsed_s", "shards_failed", "waiting"):
        status[key] = progress.get(key)
    if success:
        status.update(images_done=success["successes"], images_failed=success["failed"],
                      eta_s=0, repaired=success.get("repaired", []))
        if success.get("quality"):  # scorer counts, best-of-n, variety, duplicate groups
            status["quality"] = success["quality"]
    return _for_machines(status)


def _for_machines(status: dict[str, Any]) -> dict[str, Any]:
    """Add what a script polling ``status --json`` needs: the fraction done, the age of the
    last progress write, and ``state`` kept to one word (the why goes in ``note``)."""
    counted = (status.get("images_done") or 0) + (status.get("images_failed") or 0)
    status["fraction_done"] = round(counted / status["images_total"], 4) \
        if status["images_total"] else 1.0
    updated = status.get("updated_at")
    status["age_s"] = round(time.time() - updated, 1) if updated else None
    if status["state"] == "running" and (status["age_s"] or 0) > 600:
        status["state"] = "stalled"
        status["note"] = "no progress written for 10 minutes; driver gone?"
    elif status["state"] == "running" and status.get("waiting"):
        status["note"] = status["waiting"]
    return status


def format_status(s: dict[str, Any]) -> str:
    note = f" ({s['note']})" if s.get("note") else ""
    lines = [f"{s['output']}  [{s['name']}]  state: {s['state']}{note}",
             f"  shards  {s['shards_done']}/{s['shards_total']} committed"
             + (f", {s['shards_failed']} failed" if s.get("shards_failed") else ""),
             f"  images  {s.get('images_done') or 0}/{s['images_total']} generated, "
             f"{s.get('images_failed') or 0} failed"]
    if s.get("images_per_s"):
        lines.append(f"  rate    {s['images_per_s']:.2f} images/s"
                     + (f", ETA {s['eta_s']:.0f} s" if s.get("eta_s") else ""))
    return "\n".join(lines)
