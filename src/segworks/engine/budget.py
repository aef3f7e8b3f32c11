"""Fitting a run's length to a time budget (`TrainConfig.fit_minutes`).

The epochs a budget holds depend on the machine as it is during the run, which a few timed
steps before training only estimate (a busy machine, data loading and validation move it by
20-30%, benchmarks/RESULTS.md). So after the first epoch the run is refitted once from that
epoch's measured time: `epochs` becomes the whole epochs the budget holds (never fewer than
one, never a number already passed) and the learning-rate schedule is rebuilt for the new
length at the same iteration, so its decay ends when the time does. The refitted `epochs` is
saved in every checkpoint; a resumed run keeps it and is not refitted again. The first epoch
carries one-off costs (loader start-up, `torch.compile`), so the fit errs on the short side;
whole epochs mean up to one epoch of a short budget can stay unused.

`budget_clock` "cpu" counts this process's CPU time (`time.process_time`) for `fit_minutes` and
`max_minutes` alike, which other jobs on a shared machine do not inflate; with it, data loading
is counted only with `workers=0`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from segworks.config import TrainConfig
from segworks.engine import distributed as ddp

log = logging.getLogger(__name__)


def budget_clock(cfg: TrainConfig) -> Callable[[], float]:
    """The clock of `max_minutes` and `fit_minutes`: wall time, or this process's CPU time."""
    return time.process_time if cfg.budget_clock == "cpu" else time.monotonic


def budget_epochs(budget_minutes: float, epoch_seconds: float, epochs_done: int) -> int:
    """Whole epochs of `epoch_seconds` that fit the budget, at least `epochs_done` (and 1)."""
    fitted = int(60.0 * budget_minutes / max(epoch_seconds, 1e-9))
    return max(1, epochs_done, fitted)


def refit_epochs(run: Any, epoch_seconds: float, build_schedule: Callable) -> None:
    """Set `run.cfg.epochs` from the first epoch's time and rebuild the schedule in place."""
    cfg = run.cfg
    seconds = torch.tensor([float(epoch_seconds)], dtype=torch.float64, device=run.device)
    seconds = ddp.all_reduce_sum(seconds, run.info).item() / max(1, run.info.world_size)
    epochs = budget_epochs(cfg.fit_minutes, seconds, run.epoch)
    if run.info.is_main:
        log.info("first epoch took %.1f s (%s clock): %d epochs fit %.1f minutes (was %d)",
                 seconds, cfg.budget_clock, epochs, cfg.fit_minutes, cfg.epochs)  # fmt: skip
    if epochs == cfg.epochs:
        return
    cfg.epochs = epochs
    iteration = run.scheduler.last_epoch
    scheduler = build_schedule(cfg, run.optimizer, run.steps_per_epoch)
    scheduler.last_epoch = iteration - 1
    scheduler.step()  # the new schedule's learning rate at the same iteration
    run.scheduler = scheduler
