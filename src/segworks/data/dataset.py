"""One dataset class for every layout: a list of (image, mask) files and a mask decoder.

Bad files and skip_bad:
- Missing files are found when the dataset is built (one stat per file). Without skip_bad the
  first one raises DataError; with skip_bad each is logged as a warning and its pair dropped.
- A file that exists but cannot be used (corrupt JPEG, truncated PNG, mask size differing from
  the image, unknown RGB colour, label values outside the classes) is found when it is read.
  Without skip_bad read() raises DataError naming the file and the problem. With skip_bad,
  __getitem__ logs a warning once, remembers the index as bad and returns the next good sample
  in order instead (wrapping around), so a batch never holds a wrong or partial label; if no
  sample is good, DataError is raised. `validate()` decodes every pair up front and drops the
  bad ones, so `len()` is exact (check-data reports them without dropping).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from segworks import IGNORE_INDEX
from segworks.data.formats import DRAWN_FORMATS, MaskDecoder, apply_roi
from segworks.data.meta import DatasetMeta
from segworks.data.reading import image_size, open_image
from segworks.data.transforms import eval_transforms
from segworks.data.yolo import read_labels
from segworks.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One image and its mask file (.png/.npy/labelme .json/YOLO .txt); label is None when
    unlabelled. roi: a region-of-interest mask; labels outside it (value 0) are void."""

    image: Path
    label: Path | None
    roi: Path | None = None


def missing_file_problems(samples: list[Sample]) -> list[tuple[int, DataError]]:
    """(index, error) for each sample whose image or mask file does not exist."""
    problems = []
    for index, sample in enumerate(samples):
        for kind, path in (("image", sample.image), ("mask", sample.label), ("ROI", sample.roi)):
            if path is not None and not Path(path).is_file():
                problems.append((index, DataError(path, f"{kind} file not found")))
                break
    return problems


def pair_header_check(sample: Sample) -> None:
    """Both files' headers are readable and the mask (if any) has the image's size."""
    height, width = image_size(sample.image)
    if sample.label is None:
        return
    if sample.label.suffix.lower() == ".txt":  # YOLO polygons: no size; the lines are checked
        read_labels(sample.label)
        return
    mask_height, mask_width = mask_size(sample.label)
    if (mask_height, mask_width) != (height, width):
        raise DataError(
            sample.label,
            f"mask size {mask_width}x{mask_height} differs from image {sample.image.name} size "
            f"{width}x{height} (W x H)",
        )


def mask_size(path: Path) -> tuple[int, int]:
    """(H, W) of a mask file from its header: image files, labelme JSON and .npy arrays."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        return image_size(path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(path, f"cannot load .npy array ({error})") from None
    shape = array.shape[1:] if array.ndim == 3 and array.shape[0] == 1 else array.shape[:2]
    return int(shape[0]), int(shape[1])


class SegmentationDataset(Dataset):
    """(image, label) pairs. read() gives the RGB PIL image and int64 (H, W) labels with void
    mapped to 255 at the original size; __getitem__ applies the paired transform (by default
    ImageNet normalisation only) and returns (FloatTensor[3, H, W], LongTensor[H, W])."""

    def __init__(
        self,
        samples: list[Sample],
        meta: DatasetMeta,
        decoder: MaskDecoder,
        *,
        transform: Callable | None = None,
        skip_bad: bool = False,
    ):
        self.meta = meta
        self.decoder = decoder
        self.skip_bad = skip_bad
        self.samples = self._existing(list(samples))
        self.transform = transform if transform is not None else eval_transforms()
        self.bad: dict[int, DataError] = {}

    def _existing(self, samples: list[Sample]) -> list[Sample]:
        problems = missing_file_problems(samples)
        if problems and not self.skip_bad:
            raise problems[0][1]
        for _, error in problems:
            log.warning("skipping a pair: %s", error)
        dropped = {index for index, _ in problems}
        return [s for i, s in enumerate(samples) if i not in dropped]

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The image (RGB) and its labels (int64, void = 255) at their original size."""
        sample = self.samples[index]
        image = open_image(sample.image)
        height, width = image.height, image.width
        image = image.convert("RGB")
        if sample.label is None:
            return image, np.full((height, width), IGNORE_INDEX, dtype=np.int64)
        size = (height, width) if self.decoder.mask_format in DRAWN_FORMATS else None
        labels = self.decoder(sample.label, size)
        if sample.roi is not None and labels.shape == (height, width):
            labels = apply_roi(labels, sample.roi)
        if labels.shape != (height, width):
            raise DataError(
                sample.label,
                f"mask size {labels.shape[1]}x{labels.shape[0]} differs from image "
                f"{sample.image.name} size {width}x{height} (W x H)",
            )
        return image, labels

    def __getitem__(self, index: int):
        if not self.skip_bad:
            return self.transform(*self.read(index))
        for step in range(len(self.samples)):
            current = (index + step) % len(self.samples)
            if current in self.bad:
                continue
            try:
                pair = self.read(current)
            except DataError as error:
                self.bad[current] = error
                log.warning("skipping a bad pair: %s", error)
                continue
            return self.transform(*pair)
        raise DataError(self.samples[index].image, "no readable pair left in the dataset")

    def validate(self) -> list[DataError]:
        """Decode every pair; drop the bad ones (skip_bad) or raise the first problem."""
        errors, good = [], []
        for index, sample in enumerate(self.samples):
            try:
                self.read(index)
                good.append(sample)
            except DataError as error:
                if not self.skip_bad:
                    raise
                log.warning("skipping a bad pair: %s", error)
                errors.append(error)
        self.samples, self.bad = good, {}
        return errors

    def check_headers(self) -> list[DataError]:
        """Read every pair's headers (not the pixels): an unreadable file or a mask whose size
        differs from its image raises DataError, or with skip_bad drops the pair with a
        warning. Training calls this before its first step, so no epoch meets a bad pair late."""
        errors, good = [], []
        for sample in self.samples:
            try:
                pair_header_check(sample)
                good.append(sample)
            except DataError as error:
                if not self.skip_bad:
                    raise
                log.warning("skipping a bad pair: %s", error)
                errors.append(error)
        if not good and self.samples:
            raise DataError(self.samples[0].image, "no readable pair left in the dataset")
        self.samples, self.bad = good, {}
        return errors

    def image_size(self, index: int) -> tuple[int, int]:
        """(H, W) of an image from its header only."""
        return image_size(self.samples[index].image)

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset({len(self)} pairs, {self.meta.num_classes} classes, "
            f"task={self.meta.task!r}, masks={self.decoder.mask_format!r})"
        )
