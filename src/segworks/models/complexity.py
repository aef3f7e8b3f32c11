"""Parameter and multiply-accumulate counts of a model, for `segworks models --detail`.

MACs are counted by torch's FlopCounterMode, which knows the convolutions (transposed included),
matrix products and attention: one multiply-accumulate is two FLOPs, so MACs = FLOPs / 2.
Element-wise work (BatchNorm, ReLU, pooling, interpolation, additions) is not counted, which is
the convention of published MAC and "FLOP" figures. The model runs on the meta device (a copy
without data), so counting DeepLabV3-ResNet101 at 512x512 takes well under a second.

An auxiliary head (the attribute `aux_classifier` of DeepLabV3-like models) serves only
training, so it is left out of both counts: the figures describe the deployed network.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params_and_macs"]


def count_params_and_macs(
    model: nn.Module, *, size: tuple[int, int] = (512, 512), in_channels: int = 3
) -> tuple[int, int]:
    """(parameters, MACs for one image of `size` = (height, width)), without an aux head."""
    if len(size) != 2 or min(size) < 1 or in_channels < 1:
        raise ValueError(
            f"size {size} must be (height, width) > 0 and in_channels {in_channels} > 0"
        )
    probe = copy.deepcopy(model).to("meta").eval()
    if getattr(probe, "aux_classifier", None) is not None:
        probe.aux_classifier = None
    params = sum(parameter.numel() for parameter in probe.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        probe(torch.zeros(1, in_channels, *size, device="meta"))
    return params, counter.get_total_flops() // 2
