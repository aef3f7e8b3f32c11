"""Learn tests: every model family solves a small task that needs spatial context, and a
per-pixel classifier (1x1 convolutions only) trained the same way does not.

The task: noisy images with filled squares (class 1) and hollow square frames (class 2) on a
background (class 0). Squares and frames have exactly the same pixel distribution, so a pixel
alone tells object from background but not square from frame; only the shape around it does.
In the binary variant the foreground is the frames, and squares belong to the background.
Objects live one per grid cell whose side matches the model's output stride.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import PerPixel
from torch import nn

from segworks.models import build_model


def shapes_task(
    count: int, size: int, cell: int, seed: int, binary: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images float[N, 3, size, size], targets long[N, size, size]); each cell of the grid
    holds nothing, a square or a frame, of side cell/2 to 3*cell/4 and stroke side/4."""
    g = torch.Generator().manual_seed(seed)
    images = 0.3 * torch.randn(count, 3, size, size, generator=g)
    targets = torch.zeros(count, size, size, dtype=torch.long)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=g))

    for index in range(count):
        for top0 in range(0, size - cell + 1, cell):
            for left0 in range(0, size - cell + 1, cell):
                kind = draw(0, 2)  # 0 empty, 1 square, 2 frame
                if kind == 0:
                    continue
                side = draw(cell // 2, cell * 3 // 4)
                stroke = max(1, side // 4)
                top, left = top0 + draw(0, cell - side), left0 + draw(0, cell - side)
                mask = torch.zeros(size, size, dtype=torch.bool)
                mask[top : top + side, left : left + side] = True
                if kind == 2:
                    mask[
                        top + stroke : top + side - stroke, left + stroke : left + side - stroke
                    ] = 0
                images[index][:, mask] += 1.0
                targets[index][mask] = int(kind == 2) if binary else kind
    return images, targets


def fit(model: nn.Module, task, num_classes: int, steps: int, lr: float = 1e-2) -> nn.Module:
    images, targets = task
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(images), (8,), generator=order)
        logits = model(images[batch])["out"]
        if num_classes == 1:
            loss = F.binary_cross_entropy_with_logits(logits[:, 0], targets[batch].float())
        else:
            loss = F.cross_entropy(logits, targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def per_class_iou(model: nn.Module, task, num_classes: int) -> torch.Tensor:
    images, gt = task
    with torch.no_grad():
        logits = model(images)["out"]
    pred = (logits[:, 0] > 0).long() if num_classes == 1 else logits.argmax(1)
    k = max(num_classes, 2)
    confusion = torch.bincount(gt.flatten() * k + pred.flatten(), minlength=k * k).view(k, k)
    intersection = confusion.diag().double()
    return intersection / (confusion.sum(0) + confusion.sum(1) - confusion.diag())


# tasks are (train, held-out test) pairs, made once per module
TASKS = {
    "cell16": {"size": 48, "cell": 16, "binary": False},
    "cell16_binary": {"size": 48, "cell": 16, "binary": True},
}


@pytest.fixture(scope="module")
def tasks() -> dict:
    return {
        name: (shapes_task(160, seed=1, **spec), shapes_task(24, seed=2, **spec))
        for name, spec in TASKS.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_per_pixel_control_fails(tasks, task_name):
    train, test = tasks[task_name]
    num_classes = 1 if TASKS[task_name]["binary"] else 3
    torch.manual_seed(0)
    iou = per_class_iou(
        fit(PerPixel(num_classes, hidden=32), train, num_classes, steps=100), test, num_classes
    )
    assert iou[0] > 0.8, f"the control should still find the background: {iou}"
    assert iou.mean() < 0.7, f"a per-pixel model should not tell squares from frames: {iou}"


LEARNERS = [
    # (model, kwargs, task, steps, Adam lr); 16-pixel cells, objects of 8 to 12 pixels
    ("tutorial_convnet", {"width": 16}, "cell16_binary", 100, 1e-2),  # receptive field 13
    ("tutorial_upsample", {"width": 16}, "cell16", 100, 1e-2),
    ("tutorial_transposed", {"width": 16}, "cell16", 100, 1e-2),
    ("tutorial_concat", {"width": 16}, "cell16", 100, 1e-2),
    ("unet", {"base_width": 8, "depth": 2}, "cell16", 150, 1e-2),
    ("unet_original", {"base_width": 8, "depth": 2}, "cell16", 150, 3e-3),  # no BatchNorm
    ("segnet_basic", {"width": 16}, "cell16", 150, 1e-2),
    ("segnet", {"base_width": 8}, "cell16", 200, 1e-2),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, task_name, steps, lr", LEARNERS)
def test_model_learns_shapes_that_need_context(tasks, name, kwargs, task_name, steps, lr):
    train, test = tasks[task_name]
    num_classes = 1 if TASKS[task_name]["binary"] else 3
    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, **kwargs)
    iou = per_class_iou(fit(model, train, num_classes, steps, lr), test, num_classes)
    assert iou.mean() > 0.8, f"{name} held-out IoU per class {iou}"
