"""segworks: semantic, binary and instance segmentation on PyTorch.

The Python API (`segworks.get_model`, `train`, `evaluate`, `Predictor`, see `segworks.api`) is
imported on first use, so `import segworks` stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
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


def lazy_attributes(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `table[name]` (a module path) on first use."""

    def attribute(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return attribute


__getattr__ = lazy_attributes(__name__, _LAZY)
