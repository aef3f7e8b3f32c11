"""What the Chainer and Detectron importers share: the import report, the strict loader and the
checkpoint meta of a BGR, Caffe-normalised model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from segworks.errors import DataError

# Caffe's ImageNet means on the 0..255 scale, in BGR order (chainer-ResNet, MSRA ResNet).
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@dataclass
class ImportReport:
    """What happened to every key of a foreign file."""

    source: str
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (file key, segworks key)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (file key, reason)

    def ignore(self, key: str, reason: str) -> None:
        self.ignored.append((key, reason))

    def lines(self) -> list[str]:
        """A summary: counts, then each ignored key with its reason."""
        out = [f"{self.source}: {len(self.mapped)} weights mapped, {len(self.ignored)} ignored"]
        out += [f"  ignored {key}: {reason}" for key, reason in self.ignored]
        return out


def as_tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).clone()


def fill_model(
    module: nn.Module, state: dict[str, Tensor], path: str | Path, report: ImportReport
) -> None:
    """Load `state` into `module`; refuse (DataError) when a weight would stay random.

    A target key the module does not have, or a shape that differs, is an error too: the
    mapping table and the file disagree, and the import would not reproduce the original.
    """
    expected = module.state_dict()
    unknown = [key for key in state if key not in expected]
    wrong = [
        f"{key} {tuple(state[key].shape)} in file vs {tuple(expected[key].shape)} in model"
        for key in state
        if key in expected and state[key].shape != expected[key].shape
    ]
    missing = [
        key for key in expected if key not in state and not key.endswith("num_batches_tracked")
    ]
    problems = [
        f"{len(items)} {title}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
        for title, items in (
            ("weights would be left at random (no key of the file fills them)", missing),
            ("mapped keys the model does not have", unknown),
            ("shape mismatches", wrong),
        )
        if items
    ]
    if problems:
        raise DataError(path, f"cannot import into {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=False)


def bgr_meta(num_classes: int, mean_bgr: tuple[float, ...], source: str) -> dict[str, Any]:
    """Checkpoint meta for a model that takes BGR 0..255 input minus `mean_bgr` (no std).

    segworks normalises (x / 255 - mean) / std, so mean = m / 255 and std = 1 / 255 give
    x - m exactly (up to float rounding)."""
    return {
        "task": "semantic" if num_classes > 1 else "binary",
        "class_names": [f"class_{index}" for index in range(max(num_classes, 2))],
        "palette": [],
        "ignore_index": 255,
        "channel_order": "bgr",
        "mean": [value / 255 for value in mean_bgr],
        "std": [1 / 255] * 3,
        "imported_from": source,
    }
