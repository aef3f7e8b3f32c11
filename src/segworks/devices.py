"""Turning the --device / -g flags into a torch.device, with one clear error for a bad one."""

from __future__ import annotations

import torch

from segworks.errors import SegworksError


def resolve_device(name: str | None) -> torch.device:
    """`name` ("auto" or None: CUDA when present, else the CPU; "cpu", "cuda", "cuda:N")."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SegworksError(
            f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}"
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SegworksError(
            f"device {name!r} asked for, but CUDA is not available (use --device cpu)"
        )
    return device


def gpu_device_name(gpu: int) -> str:
    """The device name of a -g/--gpu index: -1 (or any negative) is the CPU."""
    return "cpu" if gpu < 0 else f"cuda:{gpu}"
