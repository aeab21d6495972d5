"""The step loop every training run shares: deadline, signals, loss log, periodic samples
and checkpoints, resume, export. A family's run module provides only a :class:`Run`."""

from __future__ import annotations

import logging
import os
import time
from typing import Protocol

from models.train.common import StopFlag, log_losses, mean_losses

log = logging.getLogger("synthset.train")


class Run(Protocol):
    """What one family's training contributes: a trainer with ``step_count`` and ``step()``,
    and how to checkpoint, sample and export it."""

    trainer: object
    total_steps: int

    def stage(self) -> str:
        """The training stage now ("gan"; "vq" then "ar"): a change ends a stage."""

    def before_step(self, deadline: float | None) -> None:
        """Per-step settings that depend on the wall clock (a schedule tied to max_minutes)."""

    def save_checkpoint(self, run_dir: str) -> str: ...

    def save_samples(self, folder: str) -> None: ...

    def export(self, export_dir: str) -> str: ...


def run_steps(run: Run, cfg: dict, deadline: float | None, desc: str) -> str:
    """Step until ``total_steps``, the deadline or SIGTERM/SIGINT; then checkpoint, sample
    and export. Returns the export folder."""
    from tqdm import tqdm

    trainer = run.trainer
    flag, start, window = StopFlag(), time.time(), []
    bar = tqdm(total=run.total_steps, initial=trainer.step_count, mininterval=5, desc=desc)
    try:
        while trainer.step_count < run.total_steps and not flag.stop:
            stage = run.stage()
            run.before_step(deadline)
            window.append(trainer.step())
            bar.update(1)
            _after_step(run, cfg, window, start, stage_ended=stage != run.stage())
            if deadline and time.time() > deadline:
                log.info("max_minutes reached at step %d", trainer.step_count)
                break
    finally:
        bar.close()
        flag.restore()
    run.save_checkpoint(cfg["out_dir"])
    run.save_samples(os.path.join(cfg["out_dir"], "samples"))
    return run.export(cfg.get("export_dir") or os.path.join(cfg["out_dir"], "export"))


def _after_step(run: Run, cfg: dict, window: list[dict], start: float,
                stage_ended: bool) -> None:
    step = run.trainer.step_count
    # step 1 is logged alone: the untrained baseline that later windows are compared to
    if window and (step % int(cfg["log_every"]) == 0 or step == 1 or stage_ended):
        log_losses(os.path.join(cfg["out_dir"], "losses.jsonl"), step, mean_losses(window),
                   time.time() - start)
        window.clear()
    if stage_ended or (cfg.get("sample_every") and step % int(cfg["sample_every"]) == 0):
        run.save_samples(os.path.join(cfg["out_dir"], "samples"))
    if stage_ended or (cfg.get("checkpoint_every") and step % int(cfg["checkpoint_every"]) == 0):
        run.save_checkpoint(cfg["out_dir"])
