"""Datasets for semantic and binary segmentation: layouts, mask formats, paired transforms.

The names below are imported on first use, so that the torch-free modules of this package
(`formats`, `reading`, `encoding`, `meta`, `layouts`) can be used where torch is not installed
(`predict --onnx`).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Sample": "segworks.data.dataset",
    "SegmentationDataset": "segworks.data.dataset",
    "DatasetSource": "segworks.data.layouts",
    "open_source": "segworks.data.layouts",
    "IMAGENET_MEAN": "segworks.data.meta",
    "IMAGENET_STD": "segworks.data.meta",
    "DatasetMeta": "segworks.data.meta",
    "voc_palette": "segworks.data.meta",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segworks.data' has no attribute {name!r}")
