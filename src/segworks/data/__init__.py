"""Datasets for semantic and binary segmentation: layouts, mask formats, paired transforms."""

from segworks.data.dataset import Sample, SegmentationDataset
from segworks.data.layouts import DatasetSource, open_source
from segworks.data.meta import IMAGENET_MEAN, IMAGENET_STD, DatasetMeta, voc_palette

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetMeta",
    "DatasetSource",
    "Sample",
    "SegmentationDataset",
    "open_source",
    "voc_palette",
]
