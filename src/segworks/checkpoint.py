"""Checkpoints: one dict with the model state and everything needed to predict from it.

`segworks.models.model_from_checkpoint` rebuilds the model from one.

Layout (all plain Python types and tensors, loadable with `weights_only=True`):
    model        state_dict of the bare model (never a DDP/compiled wrapper)
    model_name   registry key, e.g. "unet"
    model_kwargs keyword arguments of the registry builder (num_classes included)
    meta         dict: task, class_names, palette, ignore_index, mean, std
    config       the resolved training config (dataclasses.asdict)
    ... training state (optimizer, scheduler, scaler, epoch, step, rng, best) when resumable
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segworks.errors import DataError
from segworks.fileio import atomic_path


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, then rename over `path`."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def read_torch_file(path: str | Path, kind: str = "checkpoint", *, mmap: bool = False) -> Any:
    """What `torch.save` wrote to `path`, loaded on the CPU with `weights_only=True`; a missing
    or unreadable file is a DataError naming the `kind` of file ("checkpoint", "weights").
    `mmap`: tensors of a zip-format file are memory-mapped, not read (to look at the keys)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{kind} file not found")
    head = _head(path)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise DataError(path, f"not a {kind} file (torch.save writes a zip or pickle file)")
    mmap = mmap and head.startswith(b"PK")  # the legacy pickle format cannot be mapped
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises many types for a bad file
        raise DataError(path, _load_problem(kind, error)) from error


def _head(path: Path) -> bytes:
    """The first 4 bytes: torch.save writes a zip archive (PK) or a legacy pickle (0x80)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4)
    except OSError as error:
        raise DataError(path, f"cannot read the file ({error.strerror or error})") from None


def _load_problem(kind: str, error: Exception) -> str:
    """One line: torch's own message spans lines and advises an unsafe load."""
    text = str(error)
    if "weights_only" in text or "Weights only" in text:
        return (
            f"the {kind} holds Python objects besides tensors and plain values; segworks loads "
            "only those (weights_only=True) and never runs code from a file"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first.split(". ")[0].rstrip(".")
    return f"not a readable torch {kind} file ({type(error).__name__}: {first})"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU; a missing or unreadable file is a DataError."""
    checkpoint = read_torch_file(path, "checkpoint")
    if not isinstance(checkpoint, dict):
        raise DataError(path, f"expected a dict checkpoint, got {type(checkpoint).__name__}")
    return checkpoint
