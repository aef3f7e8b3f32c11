"""A torchvision-style instance dataset: targets rasterised at the training size."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import Dataset

from segworks import IGNORE_INDEX
from segworks.data.instances.records import (
    Instance,
    InstanceRecord,
    InstanceSet,
)
from segworks.errors import DataError, SegworksError


def _resized(height: int, width: int, min_size: int | None, max_size: int) -> tuple[int, int]:
    """Shrink so the short side is min_size and the long side at most max_size; never enlarge."""
    if min_size is None:
        return height, width
    scale = min(min_size / min(height, width), max_size / max(height, width), 1.0)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _instance_mask(instance: Instance, record: InstanceRecord, size: tuple[int, int]) -> Tensor:
    height, width = size
    if instance.polygons is not None:
        sy, sx = height / record.height, width / record.width
        scaled = [
            [v * (sx if i % 2 == 0 else sy) for i, v in enumerate(p)] for p in instance.polygons
        ]
        rle = mask_utils.merge(mask_utils.frPyObjects(scaled, height, width))
        return torch.from_numpy(mask_utils.decode(rle))
    rle = instance.rle
    if isinstance(rle["counts"], list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    mask = torch.from_numpy(mask_utils.decode(rle))
    if tuple(mask.shape) != (height, width):
        mask = torch.nn.functional.interpolate(mask[None, None].float(), size=size, mode="nearest")
        mask = mask[0, 0].to(torch.uint8)
    return mask


def build_target(record: InstanceRecord, size: tuple[int, int]) -> dict[str, Tensor]:
    """torchvision's target dict for `record` rasterised at `size` (height, width)."""
    masks, labels, crowd = [], [], []
    for instance in record.instances:
        mask = _instance_mask(instance, record, size)
        if mask.any():
            masks.append(mask)
            labels.append(instance.label)
            crowd.append(instance.iscrowd)
    masks_t = torch.stack(masks) if masks else torch.zeros((0, *size), dtype=torch.uint8)
    return {
        "boxes": masks_to_boxes(masks_t),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks_t,
        "image_id": record.image_id,
        "iscrowd": torch.tensor(crowd, dtype=torch.int64),
        "area": masks_t.flatten(1).sum(1).float(),
    }


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Pixel-extent boxes (x1, y1, x2 + 1, y2 + 1) of binary masks (N, H, W)."""
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    for index, mask in enumerate(masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        boxes[index] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return boxes


def hflip_target(target: dict[str, Tensor], width: int) -> dict[str, Tensor]:
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return target | {"boxes": boxes, "masks": target["masks"].flip(-1)}


class InstanceDataset(Dataset):
    """Images and torchvision targets of an InstanceSet (optionally a subset of its records).

    Large images are shrunk so the short side is `min_size` and the long side at most
    `max_size` (None: original size); `hflip` is the horizontal flip probability.
    """

    def __init__(
        self,
        instance_set: InstanceSet,
        indices: list[int] | None = None,
        *,
        min_size: int | None = 800,
        max_size: int = 1333,
        hflip: float = 0.0,
    ):
        self.instance_set = instance_set
        self.records = (
            [instance_set.records[i] for i in indices]
            if indices is not None
            else list(instance_set.records)
        )
        self.min_size, self.max_size, self.hflip = min_size, max_size, hflip

    @property
    def class_names(self) -> list[str]:
        return self.instance_set.class_names

    def __len__(self) -> int:
        return len(self.records)

    def size(self, index: int) -> tuple[int, int]:
        record = self.records[index]
        return _resized(record.height, record.width, self.min_size, self.max_size)

    def target(self, index: int) -> dict[str, Tensor]:
        """The unflipped target of record `index` without reading its pixels."""
        return build_target(self.records[index], self.size(index))

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        record = self.records[index]
        try:
            image = Image.open(record.image).convert("RGB")
        except OSError as error:
            raise DataError(record.image, f"cannot read image ({error})") from error
        if (image.height, image.width) != (record.height, record.width):
            raise DataError(
                record.image,
                f"image is {image.width}x{image.height}, annotations say "
                f"{record.width}x{record.height}",
            )
        height, width = self.size(index)
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), Image.BILINEAR)
        tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div_(255)
        target = self.target(index)
        if self.hflip > 0 and torch.rand(()) < self.hflip:
            tensor, target = tensor.flip(-1), hflip_target(target, width)
        return tensor, target


def collate_instances(batch: list) -> tuple[list[Tensor], list[dict]]:
    images, targets = zip(*batch)
    return list(images), list(targets)


def semantic_from_instances(
    target: dict[str, Tensor], *, height: int | None = None, width: int | None = None
) -> Tensor:
    """A semantic label map (H, W) int64 from an instance target: 0 background, label k for
    class k, crowd regions IGNORE_INDEX; where instances overlap the smaller one wins."""
    masks = target["masks"]
    if masks.ndim == 4:  # model outputs (N, 1, H, W) probabilities
        masks = masks[:, 0] > 0.5
    if masks.shape[0] == 0 and (height is None or width is None):
        raise SegworksError("semantic_from_instances needs height and width for an empty target")
    shape = masks.shape[-2:] if masks.shape[0] else (height, width)
    semantic = torch.zeros(shape, dtype=torch.int64)
    crowd = target.get("iscrowd", torch.zeros(len(masks), dtype=torch.int64))
    areas = masks.flatten(1).sum(1)
    for index in torch.argsort(areas, descending=True).tolist():
        value = IGNORE_INDEX if int(crowd[index]) else int(target["labels"][index])
        semantic[masks[index].bool()] = value
    return semantic
