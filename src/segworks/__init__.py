"""segworks: semantic, binary and instance segmentation on PyTorch."""

__version__ = "0.1.0"

IGNORE_INDEX = 255
"""Label value ignored by losses and metrics. Readers map a dataset's own void value to it."""
