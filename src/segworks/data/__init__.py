"""Datasets for semantic and binary segmentation: layouts, mask formats, paired transforms.

The names below are imported on first use, so that the torch-free modules of this package
(`formats`, `reading`, `encoding`, `meta`, `layouts`) can be used where torch is not installed
(`predict --onnx`).
"""

from __future__ import annotations

from segworks import lazy_attributes

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


__getattr__ = lazy_attributes(__name__, _LAZY)
