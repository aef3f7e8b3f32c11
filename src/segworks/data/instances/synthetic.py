"""Synthetic instance data for tests: discs and squares told apart by shape only."""

from __future__ import annotations

import torch
from torch import Tensor

from segworks.data.instances.dataset import masks_to_boxes


def synthetic_shapes(
    count: int, *, size: int = 128, seed: int = 0, max_objects: int = 3
) -> list[tuple[Tensor, dict[str, Tensor]]]:
    """Images of non-overlapping discs (label 1) and squares (label 2) in random colours on a
    noisy background, with torchvision targets: a small task where only shape tells the class."""
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    samples = []
    for _ in range(count):
        image = torch.rand(3, 1, 1, generator=generator) * 0.3
        image = image + torch.rand(3, size, size, generator=generator) * 0.15
        masks, labels = [], []
        for _ in range(int(torch.randint(1, max_objects + 1, (), generator=generator))):
            shape = _random_shape(generator, rows, cols, size, masks)
            if shape is not None:
                colour = 0.5 + 0.5 * torch.rand(3, 1, 1, generator=generator)
                image = torch.where(shape[0], colour, image)
                masks.append(shape[0])
                labels.append(shape[1])
        stacked = torch.stack(masks).to(torch.uint8)
        target = {
            "boxes": masks_to_boxes(stacked),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": stacked,
            "image_id": len(samples),
            "iscrowd": torch.zeros(len(labels), dtype=torch.int64),
            "area": stacked.flatten(1).sum(1).float(),
        }
        samples.append((image.clamp(0, 1), target))
    return samples


def _random_shape(generator, rows, cols, size, others) -> tuple[Tensor, int] | None:
    for _ in range(20):
        radius = int(torch.randint(size // 13, size // 5, (), generator=generator))
        cx, cy = (int(v) for v in torch.randint(radius, size - radius, (2,), generator=generator))
        label = int(torch.randint(1, 3, (), generator=generator))
        if label == 1:
            mask = (cols - cx) ** 2 + (rows - cy) ** 2 <= radius**2
        else:
            mask = ((cols - cx).abs() <= 0.8 * radius) & ((rows - cy).abs() <= 0.8 * radius)
        if all(not (mask & other).any() for other in others):
            return mask, label
    return None
