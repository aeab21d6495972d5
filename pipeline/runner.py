"""A job from spec to ``_SUCCESS``: plan, guard the output, run pending shards, commit.

Everything here runs on the driver and touches only Parquet footers, markers and
small JSON files; prompt text and models live in the actors.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from pipeline.input.duplicates import find_duplicate_ids
from pipeline.input.resolve import resolve_input
from pipeline.input.shards import KeyFormat, Shard, key_format, num_shards, plan_shards
from pipeline.input.sources import InputError, InputSet
from pipeline.output.dedup import write_duplicates
from pipeline.output.layout import JOB, SUCCESS, marker_name
from pipeline.output.lock import RunLock
from pipeline.output.manifest import Ledger, read_entries, read_markers, write_manifest
from pipeline.output.progress import Progress, committed_shards
from pipeline.output.retry import check_retry, drop_success, retry_shards
from pipeline.output.storage import OutputFolder, StorageError
from pipeline.output.verify import verify_output
from pipeline.spec import JobSpec, SpecError

log = logging.getLogger("synthset")


@dataclass
class Plan:
    """A validated job: its input, shard count, key widths and fingerprint."""

    spec: JobSpec
    inputs: InputSet
    shards: int
    keys: KeyFormat
    fingerprint: str

    @property
    def prompts(self) -> int:
        return self.inputs.num_rows

    @property
    def images(self) -> int:
        return self.prompts * self.spec.generation.images_per_prompt

    def summary(self) -> dict[str, Any]:
        return {"files": len(self.inputs.files), "prompts": self.prompts,
                "images": self.images, "shards": self.shards,
                "shard_size": self.spec.runtime.shard_size, "fingerprint": self.fingerprint}


class JobFailed(RuntimeError):
    """Some shards could not be committed; the message summarises which and why."""


def make_plan(spec: JobSpec) -> Plan:
    """Validate the spec against its input and model, reading metadata only."""
    check_model(spec)
    inputs = resolve_input(spec.input, spec.storage_options)
    if inputs.num_rows == 0 and not spec.input.allow_empty:
        names = ", ".join(f.name for f in inputs.files[:5]) + (
            f" (+{len(inputs.files) - 5} more)" if len(inputs.files) > 5 else "")
        raise InputError(f"{spec.input.path}: the input has no rows ({names}); an empty feed "
                         "is usually an upstream failure. Set input.allow_empty: true to "
                         "complete with an empty _SUCCESS instead")
    check_ids(spec, inputs)
    shards = num_shards(inputs, spec.runtime.shard_size)
    keys = key_format(shards, spec.runtime.shard_size, spec.generation.images_per_prompt)
    return Plan(spec, inputs, shards, keys, spec.fingerprint(inputs.signature()))


def check_ids(spec: JobSpec, inputs: InputSet) -> None:
    """``duplicate_ids: error``: refuse an input whose ids repeat anywhere, naming a few."""
    if not spec.input.id_column or spec.input.duplicate_ids != "error":
        return
    repeated = find_duplicate_ids(inputs, spec.input.id_column, spec.storage_options)
    if repeated:
        named = ", ".join(f"{i!r} ({n} times)" for i, n in repeated)
        raise InputError(f"input.id_column {spec.input.id_column!r}: ids repeat across the "
                         f"input: {named}{' ...' if len(repeated) == 5 else ''}. Fix the input, "
                         "or set input.duplicate_ids: keep (repeats then share their seeds)")


def check_model(spec: JobSpec) -> None:
    """Catch model settings that cannot work before any actor (or GPU) is allocated."""
    from models.registry import check_model_spec

    try:
        check_model_spec(spec.model.family, spec.model.path, spec.generation.width,
                         spec.generation.height, spec.model.factory)
    except ValueError as e:
        raise SpecError(f"model: {e}") from None


def open_output(spec: JobSpec) -> OutputFolder:
    return OutputFolder(spec.output.path, spec.storage_options, spec.output.retries,
                        spec.output.retry_backoff_s)


def claim_output(folder: OutputFolder, plan: Plan, overwrite: bool) -> None:
    """Refuse to mix two different jobs in one output folder, then record this one."""
    existing = folder.read_json(JOB)
    if existing and existing.get("fingerprint") != plan.fingerprint:
        if not overwrite:
            raise SpecError(
                f"{folder.display()} already holds a different job (fingerprint "
                f"{existing.get('fingerprint')}, this one is {plan.fingerprint}): the spec or "
                "the input changed. Use another output.path, or --overwrite to delete it.")
        log.warning("--overwrite: deleting %s", folder.display())
        folder.delete_all()
    elif existing and overwrite:
        folder.delete_all()
    folder.write_json(JOB, {"fingerprint": plan.fingerprint, "plan": plan.summary(),
                            "spec": plan.spec.public_dump(), "created_at": time.time()})


def run_job(spec: JobSpec, overwrite: bool = False, address: str | None = None,
            show_progress: bool = True, retry_failed: bool = False,
            repair: bool = False) -> dict[str, Any]:
    """Run every shard without a marker; write ``_SUCCESS`` when all are committed.

    A job already complete with the same fingerprint is left alone (a nightly run started
    twice for one date does nothing the second time); one lock object per output folder
    keeps two runs from working on it at once. ``retry_failed`` also regenerates the
    failed samples of committed shards (``output/retry.py``).

    A complete job repairs itself: shards that ``_SUCCESS`` lists but whose marker is gone
    are regenerated (the same bytes) and ``_SUCCESS`` rewritten. ``repair`` also verifies
    every committed shard and regenerates those whose data fails its checksums.
    """
    plan = make_plan(spec)
    folder = open_output(spec)
    if retry_failed:
        check_retry(folder, overwrite)
    finished = folder.read_json(SUCCESS)
    lost: list[str] = []
    if finished and finished.get("fingerprint") == plan.fingerprint and not overwrite \
            and not retry_failed and not repair:
        listed = read_entries(folder, finished, columns=("shard_name",))
        lost = sorted({s["shard_name"] for s in listed} - set(committed_shards(folder)))
        if not lost:
            log.info("%s is already complete; nothing to do", folder.display())
            return finished
        log.warning("%s: %d shard(s) listed in %s have lost their marker (%s); "
                    "regenerating them", folder.display(), len(lost), SUCCESS,
                    ", ".join(lost[:5]))
    with RunLock(folder, spec.runtime.lock_timeout_s, spec.name) as lock:
        claim_output(folder, plan, overwrite)
        lock.refresh()  # --overwrite deleted the folder, lock object included
        repaired = lost + (reopen_damaged(folder) if repair else [])
        if repaired:
            drop_success(folder)  # the dataset is not final until the repair commits
        return _run_pending(plan, folder, lock, address, show_progress, retry_failed,
                            sorted(set(repaired)))


def reopen_damaged(folder: OutputFolder) -> list[str]:
    """``--repair``: verify every committed shard; delete the marker of each whose data is
    damaged (missing or changed objects, rows, images), so the run regenerates it."""
    report = verify_output(folder)
    for name in sorted(report.damaged):
        log.warning("repair: %s is damaged; regenerating it", name)
        folder.delete(marker_name(name))
    return sorted(report.damaged)


def _pending(plan: Plan, folder: OutputFolder,
             retry_failed: bool) -> tuple[list[Shard], list[str], int]:
    """(shards to run, names of the committed shards left alone, their images).

    Only names are listed: the markers' content is read later, off the critical path,
    by the ledger (``--retry-failed`` reads them here, as it needs their failure counts).
    """
    committed = set(committed_shards(folder))
    shards = list(plan_shards(plan.inputs, plan.spec.runtime.shard_size))
    pending = [s for s in shards if plan.keys.shard_name(s.id) not in committed]
    if retry_failed:
        names = sorted(committed)
        markers = dict(zip(names, read_markers(folder, names, entries_only=True)))
        redo = retry_shards(folder, shards, markers, plan.keys.shard_name)
        if redo:
            log.info("retrying %d failed samples in %d shards",
                     sum(len(s.retry_keys) for s in redo), len(redo))
            drop_success(folder)  # the dataset is not final until the retry commits
        committed -= {plan.keys.shard_name(s.id) for s in redo}
        pending = sorted(pending + redo, key=lambda s: s.id)
    per_prompt = plan.spec.generation.images_per_prompt
    earlier = sum(s.num_rows for s in shards if plan.keys.shard_name(s.id) in committed)
    return pending, sorted(committed), earlier * per_prompt


def _run_pending(plan: Plan, folder: OutputFolder, lock: RunLock, address: str | None,
                 show_progress: bool, retry_failed: bool = False,
                 repaired: list[str] = ()) -> dict[str, Any]:
    spec = plan.spec
    pending, earlier, earlier_images = _pending(plan, folder, retry_failed)
    ledger = Ledger(folder, earlier)
    progress = Progress(folder, plan.fingerprint, plan.shards, plan.images,
                        spec.generation.images_per_prompt, ledger, earlier_images,
                        spec.runtime.progress_interval_s, show_progress)
    log.info("%d of %d shards to run (%d already committed)", len(pending), plan.shards,
             len(earlier))
    failed: dict[int, str] = {}
    def committed(shard_id: int) -> dict | None:
        """The shard's marker, if its commit landed; unknown (None) in a storage outage."""
        try:
            return folder.read_json(marker_name(plan.keys.shard_name(shard_id)))
        except StorageError as e:
            log.warning("could not check shard %d's marker: %s", shard_id, e)
            return None

    try:
        if pending:
            from pipeline.executor import ExecutorError, RayExecutor, connect

            connect(address)
            try:
                executor = RayExecutor(spec, plan.keys, progress, committed)
                failed = executor.run(pending).failed
            except ExecutorError as e:
                raise JobFailed(f"{e}; committed shards are kept, a rerun resumes") from None
        if not failed:  # the check guards _SUCCESS; in an outage it would hide JobFailed
            lock.check()
    except BaseException:
        progress.close("failed")
        raise
    if failed:
        progress.close("failed")
        reasons = "\n".join(f"  shard {plan.keys.shard_name(k)}: {v}" for k, v in
                            sorted(failed.items()))
        raise JobFailed(f"{len(failed)} of {plan.shards} shards failed; committed shards are "
                        f"kept and a rerun retries the rest:\n{reasons}")
    duplicates = None
    if spec.quality.dedup:
        duplicates = write_duplicates(folder, spec.quality.dedup_threshold,
                                      spec.quality.dedup_bands)
    manifest = write_success(folder, plan, repaired, ledger, duplicates)
    progress.close("complete")
    return manifest


def write_success(folder: OutputFolder, plan: Plan, repaired: list[str] = (),
                  ledger: Ledger | None = None,
                  duplicates: dict | None = None) -> dict[str, Any]:
    """The job manifest, written last: ``_manifest.pq`` (every shard with its counts
    and data checksums), then ``_SUCCESS``, a summary naming it. The entries come from the
    run's ledger, or from every committed marker when there is none."""
    if ledger is None:
        ledger = Ledger(folder, sorted(committed_shards(folder)))
    entries = ledger.entries()
    summary = {
        "fingerprint": plan.fingerprint, "plan": plan.summary(),
        "successes": sum(e["successes"] for e in entries),
        "failed": sum(e["failed"] for e in entries),
        "finished_at": time.time(),
    }
    if repaired:  # shards this run regenerated after they were lost or damaged
        summary["repaired"] = list(repaired)
    quality = quality_summary(entries, duplicates)
    if quality:
        summary["quality"] = quality
    return write_manifest(folder, summary, entries)


def quality_summary(entries: list[dict], duplicates: dict | None) -> dict[str, Any]:
    """The shards' quality counts summed, the job's mean variety, and the duplicates."""
    totals: dict[str, float] = {}
    for m in entries:
        for key, value in (m.get("quality") or {}).items():
            totals[key] = totals.get(key, 0) + value
    summary: dict[str, Any] = {k: v for k, v in totals.items()
                               if not k.startswith(("variety", "vendi"))}
    if totals.get("variety_prompts"):
        summary["variety"] = {"prompts": int(totals["variety_prompts"]),
                              "mean_phash_distance": round(totals["variety_sum"]
                                                           / totals["variety_prompts"], 3)}
    if totals.get("vendi_prompts"):  # the effective number of distinct images per prompt
        summary.setdefault("variety", {})["mean_vendi"] = round(
            totals["vendi_sum"] / totals["vendi_prompts"], 3)
    if duplicates is not None:
        summary["duplicates"] = duplicates
    return summary
