"""The instance model contract, checked for every entry of segworks.models.INSTANCE_MODELS.

Instance models follow torchvision's detection contract: input a list of float images (3, H, W)
in 0..1; in training mode `model(images, targets)` returns a dict of finite scalar losses, in
eval mode a list of {"boxes" (N, 4) xyxy, "labels" int64 (N,), "scores" (N,), "masks"
(N, 1, H, W) probabilities at the input size}. Every entry but maskrcnn_tiny is marked slow (15-80 s a step on 2 busy cores).
"""

from __future__ import annotations

import pytest
import torch
from helpers import DETECTOR_SMALL, one_instance

from segworks.models import INSTANCE_MODELS, build_model

LOSSES = ["loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"]
# measured on 2 busy CPU cores: 15-80 s per training step; maskrcnn_tiny takes 3 s
FAST = {"maskrcnn_tiny"}
ENTRIES = [
    name if name in FAST else pytest.param(name, marks=pytest.mark.slow)
    for name in sorted(INSTANCE_MODELS)
]


def build(name: str):
    torch.manual_seed(0)
    return build_model(name, num_classes=3, **DETECTOR_SMALL)


@pytest.mark.parametrize("name", ENTRIES)
def test_training_returns_finite_losses_and_gradients(name):
    model = build(name).train()
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 64, 80, dtype=torch.uint8),
    }
    images = [torch.rand(3, 72, 88), torch.rand(3, 64, 80)]
    losses = model(images, [one_instance(72, 88, label=2), empty])
    assert sorted(losses) == sorted(LOSSES)
    assert all(value.ndim == 0 and torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in model.roi_heads.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


@pytest.mark.parametrize("name", ENTRIES)
def test_evaluation_follows_torchvisions_detection_contract(name):
    model = build(name).eval()
    sizes = [(72, 88), (50, 61)]
    with torch.no_grad():
        outputs = model([torch.rand(3, *size) for size in sizes])
    assert isinstance(outputs, list) and len(outputs) == 2
    for output, (height, width) in zip(outputs, sizes):
        count = len(output["boxes"])
        assert count <= DETECTOR_SMALL["box_detections_per_img"]
        assert output["boxes"].shape == (count, 4) and output["boxes"].dtype == torch.float32
        assert output["labels"].dtype == torch.int64 and output["labels"].shape == (count,)
        assert ((output["labels"] >= 1) & (output["labels"] < 3)).all()
        assert output["scores"].shape == (count,)
        assert output["masks"].shape == (count, 1, height, width)
        assert ((output["masks"] >= 0) & (output["masks"] <= 1)).all()
        boxes = output["boxes"]
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert (boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 3] <= height + 1e-3).all()
