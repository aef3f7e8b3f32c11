"""DeepLabV3: parity with torchvision, atrous geometry, the auxiliary head, a learn test."""

from __future__ import annotations

import pytest
import torch
import torchvision
from helpers import PerPixel, train_and_score
from torch import nn

from segworks.models import build_model
from segworks.models.backbones import dilate_resnet, resnet_encoder
from segworks.models.deeplabv3 import deeplabv3, deeplabv3_resnet50, deeplabv3_resnet101

PARITY = [
    (torchvision.models.segmentation.deeplabv3_resnet50, deeplabv3_resnet50, (65, 73)),
    (torchvision.models.segmentation.deeplabv3_resnet101, deeplabv3_resnet101, (33, 41)),
]


def randomise_batch_norm(model: nn.Module) -> None:
    """Non-trivial running statistics, so a BatchNorm wired in the wrong place shows."""
    generator = torch.Generator().manual_seed(5)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


@pytest.mark.parametrize("reference_builder, builder, size", PARITY)
@torch.no_grad()
def test_torchvision_state_dict_loads_with_the_same_keys_and_gives_identical_outputs(
    reference_builder, builder, size
):
    torch.manual_seed(0)
    reference = reference_builder(
        weights=None, weights_backbone=None, aux_loss=True, num_classes=21
    ).eval()
    randomise_batch_norm(reference)
    ours = builder(num_classes=21).eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    expected, actual = reference(x), ours(x)
    assert torch.equal(actual["out"], expected["out"])
    assert torch.equal(actual["aux"], expected["aux"])


@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_output_stride_sets_the_atrous_rates_and_the_feature_resolution(output_stride, rates):
    model = deeplabv3(num_classes=2, backbone="resnet18", output_stride=output_stride)
    aspp = model.classifier[0]
    assert [branch[0].dilation[0] for branch in aspp.convs[1:4]] == list(rates)
    assert len(aspp.convs) == 5  # 1x1, three atrous 3x3, image pooling
    assert aspp.project[0].in_channels == 5 * 256 and isinstance(aspp.project[3], nn.Dropout)
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 64, 96))
    assert features["layer4"].shape[-2:] == (64 // output_stride, 96 // output_stride)


def test_basic_block_dilation_follows_torchvision_bottleneck_scheme():
    """`dilate_resnet` (used for ResNet-18/34, which torchvision does not dilate) applied to a
    ResNet-50 gives exactly torchvision's replace_stride_with_dilation network."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    ours = torchvision.models.resnet50()
    dilate_resnet(ours, [False, True, True])
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=0, atol=0)
    encoder = resnet_encoder(name="resnet18", output_stride=8)
    assert encoder.layer4[1].conv1.dilation == (4, 4) and encoder.layer4[0].conv1.dilation == (2, 2)


def test_aux_head_is_optional_and_sits_on_layer3():
    with_aux = deeplabv3(num_classes=3, backbone="resnet18", output_stride=16)
    without = deeplabv3(num_classes=3, backbone="resnet18", output_stride=16, aux_loss=False)
    assert with_aux.aux_classifier[0].in_channels == 256  # resnet18 layer3
    assert [type(m) for m in with_aux.aux_classifier][3] is nn.Dropout
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        assert set(with_aux.eval()(x)) == {"out", "aux"}
        assert set(without.eval()(x)) == {"out"}


def test_training_on_a_batch_of_one_uses_running_statistics_in_image_pooling():
    model = deeplabv3(num_classes=3, backbone="resnet18", output_stride=16).train()
    out = model(torch.randn(1, 3, 48, 48))
    out["out"].sum().backward()
    assert torch.isfinite(out["out"]).all()


def test_registered_names_build_the_paper_models():
    for name, depth in (("deeplabv3_resnet50", 6), ("deeplabv3_resnet101", 23)):
        with torch.device("meta"):
            model = build_model(name, num_classes=21)
        assert len(model.backbone.layer3) == depth
        assert model.classifier[4].out_channels == 21


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="output_stride"):
        deeplabv3(num_classes=3, backbone="resnet18", output_stride=32)
    with pytest.raises(ValueError, match="resnet19"):
        deeplabv3(num_classes=3, backbone="resnet19")


# ---------------------------------------------------------------------------------------------
# Learn test: stripe orientation inside rectangles, object sides >= 1.5x the output stride
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_deeplabv3_learns_texture_orientation_and_a_per_pixel_control_does_not():
    """ResNet-18 trunk (same DeepLabV3 code as ResNet-50/101), output stride 16, 24-36 px
    objects; measured about 0.75 mIoU after 60 steps, the control about 0.18."""
    torch.manual_seed(0)
    model = deeplabv3(num_classes=3, backbone="resnet18", output_stride=16, aspp_channels=32)
    task = {"steps": 60, "lr": 2e-3, "size": 64, "sides": (24, 36)}
    assert train_and_score(model, **task) > 0.65
    assert train_and_score(PerPixel(), **task) < 0.4
