"""Turning the --device / -g flags into a torch.device, with one clear error for a bad one.

Every command (train, eval, predict, demo, instance runs) follows `device_name`: --device wins
over -g/--gpu unless it is "auto".
"""

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


def device_name(device: str | None = None, gpu: int | None = None) -> str:
    """The one rule of every command for --device and -g/--gpu: a --device other than "auto"
    wins; else -g/--gpu N (-1 = the CPU, as in the seed scripts); else "auto"."""
    if device not in (None, "auto"):
        return device
    if gpu is not None:
        return gpu_device_name(gpu)
    return "auto"


def device_from_args(args) -> torch.device:
    """The device of a command's --device and -g/--gpu flags (either may be absent)."""
    return resolve_device(device_name(getattr(args, "device", None), getattr(args, "gpu", None)))
