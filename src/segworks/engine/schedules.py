"""Learning-rate schedules as pure functions of the iteration, wrapped in torch's LambdaLR.

Every schedule is a factor applied to the base learning rate and is stepped once per optimizer
step (iteration), so resuming restores it from `LambdaLR.state_dict()` (the iteration count)
and the factor functions are rebuilt from the config, never read back from a checkpoint.

* ``step``: the RefineNet seed's schedule: x0.1 once 10 epochs are done, again at 50, then at
  every multiple of 100 epochs (100, 200, ...).
* ``poly``: ``(1 - t / T) ** 0.9`` per iteration (DeepLab).
* ``cosine``: half a cosine from 1 to 0 over the run.
* ``multistep``: x0.1 at each of `milestones`, fractions of the run (Detectron's Mask R-CNN
  schedule: 0.75 and 0.9); its warm-up is at most a fifth of the run, so a short run on a
  small dataset is not all warm-up.
* ``constant``: 1.

Any schedule can start with a linear warm-up over `warmup` iterations, from 1/warmup up to 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from segworks.errors import SegworksError

MILESTONES = (0.75, 0.9)
STEP_EPOCHS = (10, 50)
STEP_EVERY = 100
POLY_POWER = 0.9


def step_drops(epochs_done: int) -> int:
    """How many x0.1 drops the seed's step schedule has applied after `epochs_done` epochs."""
    drops = sum(1 for boundary in STEP_EPOCHS if epochs_done >= boundary)
    return drops + epochs_done // STEP_EVERY


def step_factor(iteration: int, *, steps_per_epoch: int) -> float:
    return 0.1 ** step_drops(iteration // steps_per_epoch)


def poly_factor(iteration: int, *, total_steps: int, power: float = POLY_POWER) -> float:
    return max(0.0, 1.0 - iteration / total_steps) ** power


def cosine_factor(iteration: int, *, total_steps: int) -> float:
    progress = min(1.0, iteration / total_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def multistep_factor(iteration: int, *, total_steps: int, milestones=MILESTONES) -> float:
    return 0.1 ** sum(iteration >= m * total_steps for m in milestones)


def warmup_factor(iteration: int, *, warmup: int) -> float:
    """Linear warm-up: 1/warmup at iteration 0, 1 from iteration warmup - 1 on."""
    if warmup <= 0 or iteration >= warmup:
        return 1.0
    return (iteration + 1) / warmup


def lr_factor(
    name: str,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup: int = 0,
    milestones: tuple[float, ...] = MILESTONES,
) -> Callable:
    """The factor function `iteration -> multiplier of the base lr` of a named schedule."""
    if total_steps < 1 or steps_per_epoch < 1:
        raise SegworksError(
            f"total_steps and steps_per_epoch must be >= 1, got {total_steps}, {steps_per_epoch}"
        )
    if name == "step":
        base = lambda it: step_factor(it, steps_per_epoch=steps_per_epoch)  # noqa: E731
    elif name == "poly":
        base = lambda it: poly_factor(it, total_steps=total_steps)  # noqa: E731
    elif name == "cosine":
        base = lambda it: cosine_factor(it, total_steps=total_steps)  # noqa: E731
    elif name == "multistep":
        base = lambda it: multistep_factor(it, total_steps=total_steps, milestones=milestones)  # noqa: E731
        warmup = min(warmup, total_steps // 5)
    elif name == "constant":
        base = lambda it: 1.0  # noqa: E731
    else:
        raise SegworksError(
            f"schedule must be one of step, poly, cosine, multistep, constant; got {name!r}"
        )

    def factor(iteration: int) -> float:
        return warmup_factor(iteration, warmup=warmup) * base(iteration)

    return factor


def build_scheduler(
    optimizer: Optimizer,
    name: str,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup: int = 0,
    milestones: tuple[float, ...] = MILESTONES,
) -> LambdaLR:
    """A LambdaLR stepped once per optimizer step. Its state_dict holds only the counters."""
    factor = lr_factor(
        name,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        warmup=warmup,
        milestones=milestones,
    )
    return LambdaLR(optimizer, factor)
