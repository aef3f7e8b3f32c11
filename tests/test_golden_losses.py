"""Pinned first-step losses, one model per family, on seeded synthetic data.

A silent change in a model's forward logic, its initialisation or its loss moves these numbers;
a deliberate change updates them. Each entry pins the loss of the first step and the loss on
the same batch after one SGD step (so the backward pass is pinned too).

Regenerate after a deliberate change (and say why in the commit message):

    PYTHONPATH=src python tests/test_golden_losses.py    # rewrites tests/golden_losses.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import DETECTOR_SMALL, SMALL_KWARGS, one_instance

from segworks.losses import criterion
from segworks.models import build_model, model_task

GOLDEN = Path(__file__).with_name("golden_losses.json")
FAMILIES = [
    "unet",
    "unet_resnet",
    "segnet",
    "fcn8s",
    "deeplabv3",
    "deeplabv3plus",
    "refinenet",
    "maskrcnn_tiny",
]
TOLERANCE = 1e-4  # relative: thread counts reorder float sums, not more


def semantic_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 48, 64, generator=generator)
    target = torch.randint(0, 3, (2, 48, 64), generator=generator)
    target[:, :4] = 255  # an ignored band
    return images, target


def instance_batch() -> tuple[list[torch.Tensor], list[dict]]:
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 72, 88, generator=generator) for _ in range(2)]
    return images, [one_instance(label=1), one_instance(label=2)]


def step_loss(model: torch.nn.Module, name: str) -> torch.Tensor:
    torch.manual_seed(1)  # Mask R-CNN samples proposals with torch's RNG
    if model_task(name) == "instance":
        return sum(model(*instance_batch()).values())
    images, target = semantic_batch()
    return criterion(model(images), target)


def first_step_losses(name: str) -> list[float]:
    torch.manual_seed(0)
    kwargs = DETECTOR_SMALL if model_task(name) == "instance" else SMALL_KWARGS.get(name, {})
    model = build_model(name, num_classes=3, **kwargs).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    first = step_loss(model, name)
    first.backward()
    optimizer.step()
    with torch.no_grad():
        second = step_loss(model, name)
    return [first.item(), second.item()]


@pytest.mark.parametrize("name", FAMILIES)
def test_first_step_losses_match_the_pinned_values(name):
    golden = json.loads(GOLDEN.read_text())
    assert name in golden, f"no pinned losses for {name}: regenerate {GOLDEN.name}"
    assert first_step_losses(name) == pytest.approx(golden[name], rel=TOLERANCE)


def test_the_pins_move_when_the_initialisation_changes():
    golden = json.loads(GOLDEN.read_text())["unet"]
    torch.manual_seed(5)
    model = build_model("unet", num_classes=3, **SMALL_KWARGS["unet"]).train()
    assert step_loss(model, "unet").item() != pytest.approx(golden[0], rel=TOLERANCE)


if __name__ == "__main__":
    torch.set_num_threads(1)
    values = {name: first_step_losses(name) for name in FAMILIES}
    GOLDEN.write_text(json.dumps(values, indent=2) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
