"""Paired transforms: each takes and returns (image, label).

Images are PIL images until ToTensorNormalize; labels are int64 (H, W) NumPy arrays with
255 = ignore. Labels are only ever resized by nearest neighbour (an index into the source grid),
so no label value is ever averaged into another. Randomness comes from torch's RNG only
(torch.rand / torch.randint), so torch.manual_seed (and DataLoader's per-worker seeding)
reproduces every crop, flip and jitter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from segworks import IGNORE_INDEX
from segworks.data.meta import IMAGENET_MEAN, IMAGENET_STD
from segworks.errors import SegworksError

Pair = tuple[Image.Image, np.ndarray]
Size = int | tuple[int, int]


def _hw(size: Size) -> tuple[int, int]:
    """An int means a square; tuples are (H, W)."""
    if isinstance(size, int):
        height = width = size
    else:
        height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise SegworksError(f"size must be positive (H, W), got {size!r}")
    return height, width


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label array to (H, W): every output pixel copies the source
    pixel whose cell contains its centre."""
    height, width = label.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * height / size[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * width / size[1]).astype(np.int64), width - 1)
    return label[rows[:, None], cols[None, :]]


def resize_pair(image: Image.Image, label: np.ndarray, size: tuple[int, int]) -> Pair:
    """Image bilinear, label nearest, both to (H, W)."""
    if image.size == (size[1], size[0]) and label.shape == size:
        return image, label
    return image.resize((size[1], size[0]), Image.BILINEAR), resize_label(label, size)


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image, label):
        for transform in self.transforms:
            image, label = transform(image, label)
        return image, label

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


def long_side_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(H, W) with the longer side `long_side` and the aspect ratio kept (sides at least 1)."""
    factor = long_side / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


class RandomScaleCrop:
    """Rescale by a factor drawn uniformly from scale_range, pad to at least crop_size (image
    with `fill`, label with the ignore index), then crop crop_size at a random position.

    With `long_side`, the factor is relative to the image resized to that longer side (one
    resampling, not two), so images of any size reach the network at one scale.
    """

    def __init__(
        self,
        crop_size: Size,
        scale_range: tuple[float, float] = (0.5, 2.0),
        *,
        fill: tuple[int, int, int] = (0, 0, 0),
        ignore_index: int = IGNORE_INDEX,
        long_side: int | None = None,
    ):
        if not 0 < scale_range[0] <= scale_range[1]:
            raise SegworksError(f"scale_range must be 0 < low <= high, got {scale_range!r}")
        self.crop_size = _hw(crop_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.fill = tuple(fill)
        self.ignore_index = ignore_index
        self.long_side = long_side

    def __call__(self, image: Image.Image, label: np.ndarray) -> Pair:
        low, high = self.scale_range
        scale = low + (high - low) * float(torch.rand(()))
        width, height = image.size
        if self.long_side is not None:
            scale *= self.long_side / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        image, label = resize_pair(image, label, size)
        image, label = self._pad(image, label)
        return self._crop(image, label)

    def _pad(self, image: Image.Image, label: np.ndarray) -> Pair:
        crop_h, crop_w = self.crop_size
        height, width = label.shape
        if height >= crop_h and width >= crop_w:
            return image, label
        new_h, new_w = max(height, crop_h), max(width, crop_w)
        canvas = Image.new(image.mode, (new_w, new_h), self.fill if image.mode == "RGB" else 0)
        canvas.paste(image, (0, 0))
        padded = np.full((new_h, new_w), self.ignore_index, dtype=label.dtype)
        padded[:height, :width] = label
        return canvas, padded

    def _crop(self, image: Image.Image, label: np.ndarray) -> Pair:
        crop_h, crop_w = self.crop_size
        height, width = label.shape
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        image = image.crop((left, top, left + crop_w, top + crop_h))
        return image, label[top : top + crop_h, left : left + crop_w]

    def __repr__(self) -> str:
        return (
            f"RandomScaleCrop(crop_size={self.crop_size}, scale_range={self.scale_range}, "
            f"long_side={self.long_side})"
        )


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Image.Image, label: np.ndarray) -> Pair:
        if float(torch.rand(())) < self.p:
            return image.transpose(Image.FLIP_LEFT_RIGHT), np.ascontiguousarray(label[:, ::-1])
        return image, label

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomDihedral:
    """One of the 8 turns and mirror images of the square, uniformly: a vertical flip and a
    transpose, each with probability 1/2 (with a horizontal flip before, all 8 are reachable).
    For data with no "up": top-down photos, microscopy, aerial images."""

    def __call__(self, image: Image.Image, label: np.ndarray) -> Pair:
        if float(torch.rand(())) < 0.5:
            image, label = image.transpose(Image.FLIP_TOP_BOTTOM), label[::-1]
        if float(torch.rand(())) < 0.5:
            image, label = image.transpose(Image.TRANSPOSE), label.T
        return image, np.ascontiguousarray(label)

    def __repr__(self) -> str:
        return "RandomDihedral()"


class ColorJitter:
    """Photometric jitter of the image only (torchvision's ColorJitter, which uses torch's RNG)."""

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
    ):
        from torchvision.transforms import ColorJitter as TorchvisionJitter

        self.jitter = TorchvisionJitter(brightness, contrast, saturation, hue)

    def __call__(self, image: Image.Image, label: np.ndarray) -> Pair:
        return self.jitter(image), label

    def __repr__(self) -> str:
        return repr(self.jitter)


class Resize:
    """Resize to a fixed (H, W) (an int means a square): image bilinear, label nearest."""

    def __init__(self, size: Size):
        self.size = _hw(size)

    def __call__(self, image: Image.Image, label: np.ndarray) -> Pair:
        return resize_pair(image, label, self.size)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class ResizeLongSide:
    """Resize so the longer side is `long_side` (aspect kept): image bilinear, label nearest."""

    def __init__(self, long_side: int):
        self.long_side = long_side

    def __call__(self, image: Image.Image, label: np.ndarray) -> Pair:
        width, height = image.size
        return resize_pair(image, label, long_side_size(height, width, self.long_side))

    def __repr__(self) -> str:
        return f"ResizeLongSide({self.long_side})"


class ToTensorNormalize:
    """PIL image -> FloatTensor[3, H, W] normalised with mean/std (on the 0..1 scale);
    label -> LongTensor[H, W]."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Image.Image, label: np.ndarray) -> tuple[Tensor, Tensor]:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array.transpose(2, 0, 1).copy())
        tensor = (tensor - self.mean) / self.std
        return tensor, torch.from_numpy(np.asarray(label, dtype=np.int64).copy())

    def __repr__(self) -> str:
        return f"ToTensorNormalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def train_transforms(
    *,
    crop_size: Size,
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip: bool = True,
    jitter: float = 0.0,
    dihedral: bool = False,
    long_side: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """Random scale + crop (labels padded with 255), optional flips/turns and jitter, normalise.
    `long_side` makes the scale relative to the image resized to that longer side."""
    steps: list[Callable] = [RandomScaleCrop(crop_size, scale_range, long_side=long_side)]
    if hflip:
        steps.append(RandomHorizontalFlip())
    if dihedral:
        steps.append(RandomDihedral())
    if jitter > 0:
        steps.append(ColorJitter(jitter, jitter, jitter, min(jitter, 0.5) / 4))
    steps.append(ToTensorNormalize(mean, std))
    return Compose(steps)


def eval_transforms(
    *,
    size: Size | None = None,
    long_side: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """Optional resize to a fixed size (or to a longer side), then normalise (no crop)."""
    steps: list[Callable] = []
    if size is not None:
        steps.append(Resize(size))
    elif long_side is not None:
        steps.append(ResizeLongSide(long_side))
    steps.append(ToTensorNormalize(mean, std))
    return Compose(steps)
