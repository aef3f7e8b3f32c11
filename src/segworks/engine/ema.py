"""An exponential moving average (EMA) of a model's weights, the model that is validated, saved
and predicted with when `TrainConfig.ema_decay` > 0.

After every optimizer step each floating-point entry of the state dict (weights and BatchNorm
statistics) moves towards the trained model's: ``ema = d * ema + (1 - d) * weight``, with the
decay warmed up as TensorFlow's `ExponentialMovingAverage(num_updates=...)` does,
``d = min(decay, (1 + step) / (10 + step))``, so the first steps are not averaged with the
random or pretrained start for long. Integer entries (BatchNorm's batch counters) are copied.
The training loop keeps optimising the raw weights; checkpoints carry both (see
`segworks.engine.resume`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(decay: float, step: int) -> float:
    """The decay of the update after optimizer step `step` (1-based)."""
    return min(decay, (1.0 + step) / (10.0 + step))


def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` (no gradients) to hold the average, in eval mode."""
    average = copy.deepcopy(model).eval()
    for parameter in average.parameters():
        parameter.requires_grad_(False)
    return average


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """Move `average` towards `model` by the decay of step `step` (see the module doc)."""
    weight = 1.0 - ema_decay_at(decay, step)
    current = model.state_dict()
    for name, target in average.state_dict().items():
        value = current[name].detach()
        if target.is_floating_point():
            target.lerp_(value.to(target.dtype), weight)
        else:
            target.copy_(value)
