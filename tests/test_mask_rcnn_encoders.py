"""Mask R-CNN on the encoders of segworks.models.encoders (MobileNetV2, EfficientNet-Lite) and
R-50-FPN v2: torchvision parity, the training and evaluation contracts, ImageNet weights."""

from __future__ import annotations

import pytest
import torch
from helpers import DETECTOR_SMALL, randomise_batchnorm, write_coco
from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

from segworks.checkpoint import load_checkpoint
from segworks.cli import main
from segworks.errors import SegworksError
from segworks.export import export_instance_model
from segworks.models import MODELS, build_model
from segworks.models.encoders import build_encoder, level_modules
from segworks.models.mask_rcnn import maskrcnn_r50_fpn_v2
from segworks.models.pretrained import MODEL_ENCODERS, WEIGHTS, status, weights_file
from segworks.models.weights import read_state_dict

SMALL = DETECTOR_SMALL
ENCODER_MODELS = ["maskrcnn_mobilenet_v2_fpn", "maskrcnn_efficientnet_lite0_fpn"]


def one_instance(height: int = 72, width: int = 88) -> dict:
    masks = torch.zeros(1, height, width, dtype=torch.uint8)
    masks[0, 20:60, 30:80] = 1
    boxes = torch.tensor([[30.0, 20.0, 80.0, 60.0]])
    return {"boxes": boxes, "labels": torch.tensor([1]), "masks": masks}


def test_r50_fpn_v2_loads_torchvision_state_dict_key_for_key_and_matches_it():
    torch.manual_seed(0)
    reference = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, **SMALL).eval()
    randomise_batchnorm(reference)
    model = maskrcnn_r50_fpn_v2(num_classes=91, freeze_bn=False, **SMALL).eval()
    assert model.state_dict().keys() == reference.state_dict().keys()
    model.load_state_dict(reference.state_dict())  # strict
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        expected, got = reference(images)[0], model(images)[0]
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "labels", "scores", "masks"):
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    assert WEIGHTS["maskrcnn_r50_fpn_v2.coco"].fits == "maskrcnn_r50_fpn_v2"


@pytest.mark.parametrize("name", ENCODER_MODELS)
def test_training_returns_finite_losses_that_reach_the_encoder(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, **SMALL).train()
    losses = model([torch.rand(3, 72, 88)], [one_instance()])
    names = ["loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"]
    assert sorted(losses) == sorted(names)
    assert all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    encoder = model.backbone.body
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)
    assert any(p.grad.abs().sum() > 0 for p in encoder.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ENCODER_MODELS)
def test_evaluation_follows_torchvisions_detection_contract(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, **SMALL).eval()
    with torch.no_grad():
        outputs = model([torch.rand(3, 72, 88), torch.rand(3, 50, 61)])
    for output, (height, width) in zip(outputs, [(72, 88), (50, 61)]):
        count = len(output["boxes"])
        assert 0 < count <= 5
        assert output["boxes"].shape == (count, 4) and output["labels"].dtype == torch.int64
        assert output["scores"].shape == (count,)
        assert output["masks"].shape == (count, 1, height, width)
        assert ((output["masks"] >= 0) & (output["masks"] <= 1)).all()


def test_the_feature_pyramid_has_five_levels_of_256_channels():
    model = build_model("maskrcnn_mobilenet_v2_fpn", num_classes=2)
    features = model.backbone(torch.rand(1, 3, 64, 96))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape[-2:]) for f in features.values()] == [
        (16, 24), (8, 12), (4, 6), (2, 3), (1, 2)
    ]  # fmt: skip
    assert all(f.shape[1] == 256 for f in features.values())


@pytest.mark.parametrize("encoder", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
def test_level_modules_hold_every_encoder_parameter_once(encoder):
    """Five groups, bottom first, that between them own each parameter exactly once."""
    body = build_encoder(encoder).eval()
    groups = level_modules(body)
    assert len(groups) == 5
    owned = [id(p) for modules in groups for module in modules for p in module.parameters()]
    assert sorted(owned) == sorted(id(p) for p in body.parameters())


def test_trainable_levels_freeze_the_bottom_of_the_encoder_as_torchvision_does():
    path = _imagenet_file("mobilenet_v2")
    model = build_model("maskrcnn_mobilenet_v2_fpn", num_classes=2, backbone_weights=path, **SMALL)
    groups = level_modules(model.backbone.body)
    trains = [any(p.requires_grad for m in g for p in m.parameters()) for g in groups]
    assert trains == [False, False, True, True, True]  # torchvision's 3 with ImageNet weights
    scratch = build_model("maskrcnn_mobilenet_v2_fpn", num_classes=2, **SMALL)
    assert all(p.requires_grad for p in scratch.backbone.body.parameters())
    none = build_model("maskrcnn_mobilenet_v2_fpn", num_classes=2, trainable_levels=0, **SMALL)
    assert not any(p.requires_grad for p in none.backbone.body.parameters())
    model.train()
    sum(model([torch.rand(3, 72, 88)], [one_instance()]).values()).backward()
    assert all(p.grad is None for m in groups[0] for p in m.parameters())
    assert any(p.grad is not None for m in groups[4] for p in m.parameters())
    with pytest.raises(SegworksError, match="trainable_levels must be in 0..5, got 6"):
        build_model("maskrcnn_mobilenet_v2_fpn", num_classes=2, trainable_levels=6)


def test_fpn_channels_set_the_pyramid_and_head_width():
    model = build_model("maskrcnn_mobilenet_v2_fpn", num_classes=2, fpn_channels=128, **SMALL)
    features = model.backbone(torch.rand(1, 3, 64, 96))
    assert all(f.shape[1] == 128 for f in features.values())
    model.train()
    losses = model([torch.rand(3, 72, 88)], [one_instance()])
    assert all(torch.isfinite(value) for value in losses.values())


def test_anchor_sizes_set_the_anchor_side_on_each_map_and_refuse_a_wrong_count():
    model = build_model(
        "maskrcnn_mobilenet_v2_fpn", num_classes=2, anchor_sizes=[16, 32, 64, 128, 256]
    )
    sides = [float(cells[1, 2] - cells[1, 0]) for cells in model.rpn.anchor_generator.cell_anchors]
    assert sides == [16.0, 32.0, 64.0, 128.0, 256.0]  # the square anchor of each FPN map
    default = build_model("maskrcnn_mobilenet_v2_fpn", num_classes=2)
    assert [float(c[1, 2] - c[1, 0]) for c in default.rpn.anchor_generator.cell_anchors][0] == 32.0
    with pytest.raises(SegworksError, match=r"five positive integers, got \[16, 32\]"):
        build_model("maskrcnn_mobilenet_v2_fpn", num_classes=2, anchor_sizes=[16, 32])


def test_mask_head_channels_narrow_the_mask_head_and_keep_the_default_layout():
    default = build_model("maskrcnn_mobilenet_v2_fpn", num_classes=3, fpn_channels=128, **SMALL)
    narrow = build_model(
        "maskrcnn_mobilenet_v2_fpn", num_classes=3, fpn_channels=128, mask_head_channels=64, **SMALL
    )
    assert narrow.state_dict().keys() == default.state_dict().keys()
    assert default.roi_heads.mask_head[0][0].out_channels == 256  # torchvision's width
    assert narrow.roi_heads.mask_head[0][0].out_channels == 64
    assert narrow.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
    assert narrow.roi_heads.box_predictor.cls_score.out_features == 3
    narrow.train()
    losses = narrow([torch.rand(3, 72, 88)], [one_instance()])
    assert all(torch.isfinite(value) for value in losses.values())
    for name in ("mask_head_channels", "fpn_channels"):
        with pytest.raises(SegworksError, match=f"{name} must be a positive integer, got 0"):
            build_model("maskrcnn_mobilenet_v2_fpn", num_classes=3, **{name: 0})


def _imagenet_file(name: str):
    if status(WEIGHTS[name]) != "installed":
        pytest.skip(f"the package shipping {name} weights is not installed")
    return weights_file(WEIGHTS[name], download=False)


@pytest.mark.parametrize(
    "name, encoder, first_key, mean",
    [
        ("maskrcnn_mobilenet_v2_fpn", "mobilenet_v2", "features.0.0.weight", 0.485),
        ("maskrcnn_efficientnet_lite0_fpn", "efficientnet_lite0", "_conv_stem.weight", 0.5),
    ],
)
def test_imagenet_weights_load_freeze_batchnorm_and_set_normalisation(
    name, encoder, first_key, mean
):
    path = _imagenet_file(encoder)
    model = build_model(name, num_classes=2, backbone_weights=path)
    body = model.backbone.body
    own_first = body.get_parameter(body.first_conv_name() + ".weight")
    torch.testing.assert_close(own_first, read_state_dict(path)[first_key], rtol=0, atol=0)
    norms = [m for m in body.modules() if "BatchNorm" in type(m).__name__]
    assert norms and all("Frozen" in type(m).__name__ for m in norms)
    assert model.transform.image_mean[0] == mean
    assert MODEL_ENCODERS[name] == encoder
    scratch = build_model(name, num_classes=2)
    assert any(isinstance(m, nn.BatchNorm2d) for m in scratch.backbone.body.modules())


def test_frozen_batchnorm_keeps_outputs_and_timm_activations():
    """Freezing changes the module type, not the function (eval mode, same statistics)."""
    torch.manual_seed(0)
    trainable = build_model("maskrcnn_efficientnet_lite0_fpn", num_classes=2, freeze_bn=False)
    frozen = build_model("maskrcnn_efficientnet_lite0_fpn", num_classes=2, freeze_bn=True)
    randomise_batchnorm(trainable)
    state = {k: v for k, v in trainable.state_dict().items() if "num_batches" not in k}
    frozen.load_state_dict(state, strict=False)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = trainable.backbone.body.eval().pyramid(x)[-1]
        got = frozen.backbone.body.pyramid(x)[-1]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.backbone.body.modules())


def test_registered():
    for name in (*ENCODER_MODELS, "maskrcnn_efficientnet_lite2_fpn", "maskrcnn_r50_fpn_v2"):
        assert name in MODELS and name in MODEL_ENCODERS


def test_instance_cli_trains_from_mobilenet_v2_imagenet_weights(tmp_path):
    """`segworks train --task instance --pretrained mobilenet_v2` on four images, one epoch: the
    checkpoint holds the frozen-BatchNorm model, which rebuilds from its saved kwargs."""
    path = _imagenet_file("mobilenet_v2")
    train = write_coco(tmp_path / "train", 4, seed=0)
    argv = ["train", "--task", "instance", "--model", "maskrcnn_mobilenet_v2_fpn",
            "--pretrained", "mobilenet_v2", "--min-size", "64", "--max-size", "64",
            "--data", str(train), "-e", "1", "-b", "2", "--val-split", "0.5",
            "--device", "cpu", "--workers", "0", "--no-tensorboard", "--seed", "0",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint["model_kwargs"]["freeze_bn"] is True
    model = build_model("maskrcnn_mobilenet_v2_fpn", **checkpoint["model_kwargs"])
    model.load_state_dict(checkpoint["model"])
    imagenet = read_state_dict(path)
    # frozen statistics stay as loaded from the ImageNet file
    loaded = checkpoint["model"]["backbone.body.features.1.conv.0.1.running_var"]
    torch.testing.assert_close(loaded, imagenet["features.1.conv.0.1.running_var"])


@pytest.mark.slow
def test_mobilenet_v2_fpn_exports_to_onnx_with_the_same_detections(tmp_path):
    torch.manual_seed(0)
    model = build_model("maskrcnn_mobilenet_v2_fpn", num_classes=3, **SMALL).eval()
    report = export_instance_model(model, tmp_path / "mrcnn.onnx", size=(64, 80), opset=11)
    first = report["checks"][0]
    assert report["passed"] and first["detections"] > 0 and first["same_labels"]
    assert first["max_abs_masks_diff"] < 1e-3


def test_a_frozen_backbone_phase_keeps_the_levels_the_model_froze_itself():
    from segworks.config import TrainConfig
    from segworks.engine.optim import set_backbone_mode

    model = build_model("maskrcnn_mobilenet_v2_fpn", num_classes=2, trainable_levels=3, **SMALL)
    groups = level_modules(model.backbone.body)
    cfg = TrainConfig(data="unused", freeze_backbone_epochs=1)

    def trains() -> list[bool]:
        return [any(p.requires_grad for m in g for p in m.parameters()) for g in groups]

    set_backbone_mode(model.train(), cfg, epoch=0)
    assert trains() == [False] * 5
    set_backbone_mode(model.train(), cfg, epoch=1)
    assert trains() == [False, False, True, True, True]
