"""segworks: semantic, binary and instance segmentation on PyTorch.

The Python API (`segworks.get_model`, `train`, `evaluate`, `Predictor`, see `segworks.api`) is
imported on first use, so `import segworks` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

IGNORE_INDEX = 255
"""Label value ignored by losses and metrics. Readers map a dataset's own void value to it."""

_LAZY = {
    "get_model": "segworks.api",
    "train": "segworks.api",
    "evaluate": "segworks.api",
    "TrainResult": "segworks.api",
    "TrainConfig": "segworks.config",
    "Predictor": "segworks.inference.predictor",
}

__all__ = ["IGNORE_INDEX", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segworks' has no attribute {name!r}")
