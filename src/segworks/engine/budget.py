"""Fitting a run's length to a time budget (`TrainConfig.fit_minutes`).

The steps a budget holds depend on the machine as it is during the run, which a few timed
steps before training only estimate (a busy machine, data loading and validation move it by
20-30%, benchmarks/RESULTS.md). So after the first epoch the run is refitted once from that
epoch's measured training and validation times: the budget holds as many whole epochs
(training + validation) as fit, then a last, partial epoch of the training steps that fit
before its validation. `epochs` becomes the epochs started and `max_steps` the steps (None when
the last epoch is whole); the learning-rate schedule is rebuilt for the new length at the same
iteration, so its decay ends when the time does. Both are saved in every checkpoint; a resumed
run keeps them and is not refitted again. The first epoch carries one-off costs (loader
start-up, `torch.compile`), so the fit errs on the short side.

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


def budget_steps(
    budget_minutes: float,
    train_seconds: float,
    val_seconds: float,
    steps_per_epoch: int,
    steps_done: int,
) -> int:
    """Optimizer steps that fit the budget: whole epochs of `train_seconds + val_seconds`,
    then the steps of a partial epoch that fit before its validation; at least `steps_done`."""
    budget, epoch = 60.0 * budget_minutes, max(train_seconds + val_seconds, 1e-9)
    whole = int(budget // epoch)
    left = budget - whole * epoch - val_seconds
    partial = int(left / max(train_seconds, 1e-9) * steps_per_epoch) if left > 0 else 0
    return max(steps_done, whole * steps_per_epoch + min(partial, steps_per_epoch - 1))


def refit_steps(run: Any, train_seconds: float, val_seconds: float, build_schedule: Callable):
    """Set `run.cfg.epochs` and `max_steps` from the first epoch's times and rebuild the
    schedule in place."""
    cfg = run.cfg
    times = torch.tensor([train_seconds, val_seconds], dtype=torch.float64, device=run.device)
    train_seconds, val_seconds = (
        ddp.all_reduce_sum(times, run.info) / max(1, run.info.world_size)
    ).tolist()
    steps = budget_steps(cfg.fit_minutes, train_seconds, val_seconds, run.steps_per_epoch,
                         run.step)  # fmt: skip
    epochs = -(-steps // run.steps_per_epoch)
    max_steps = None if steps == epochs * run.steps_per_epoch else steps
    if run.info.is_main:
        log.info("first epoch took %.1f s + %.1f s validation (%s clock): %d steps (%d epochs, "
                 "the last %s) fit %.1f minutes (was %d epochs)", train_seconds, val_seconds,
                 cfg.budget_clock, steps, epochs, "partial" if max_steps else "whole",
                 cfg.fit_minutes, cfg.epochs)  # fmt: skip
    if (epochs, max_steps) == (cfg.epochs, cfg.max_steps):
        return
    cfg.epochs, cfg.max_steps = epochs, max_steps
    iteration = run.scheduler.last_epoch
    scheduler = build_schedule(cfg, run.optimizer, run.steps_per_epoch)
    scheduler.last_epoch = iteration - 1
    scheduler.step()  # the new schedule's learning rate at the same iteration
    run.scheduler = scheduler
