"""RefineNet: the ResNet encoder against torchvision, the paper's block structure, learning."""

from __future__ import annotations

import pytest
import torch
import torchvision
from helpers import PerPixel, train_and_score
from torchvision.models._utils import IntermediateLayerGetter

from segworks.models import build_model
from segworks.models.backbones import ResNetEncoder
from segworks.models.refinenet import ChainedResidualPooling, refinenet


@torch.no_grad()
def test_resnet_encoder_stages_equal_torchvision_intermediate_layers():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50().eval()
    layers = {f"layer{i}": f"layer{i}" for i in range(1, 5)}
    reference = IntermediateLayerGetter(resnet, return_layers=layers)
    encoder = ResNetEncoder(torchvision.models.resnet50()).eval()
    encoder.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 70, 90)
    expected, ours = reference(x), encoder(x)
    for name in layers:
        assert torch.equal(ours[name], expected[name]), name
    assert encoder.channels == (256, 512, 1024, 2048)


def test_four_cascaded_blocks_have_the_paper_widths():
    with torch.device("meta"):
        model = build_model("refinenet_resnet101", num_classes=21)
    assert [conv.out_channels for conv in model.adapt] == [256, 256, 256, 512]
    assert [conv.in_channels for conv in model.adapt] == [256, 512, 1024, 2048]
    assert model.refine4.fusion is None and len(model.refine4.rcus) == 1
    assert [c.in_channels for c in model.refine3.fusion.convs] == [512, 256]
    assert model.refine3.rcus[0][0].conv1.in_channels == 512  # RCUs on the coarse path at 512
    assert len(model.refine1.crp.blocks) == 4
    assert len(model.backbone.layer3) == 23


def test_chained_residual_pooling_sums_a_chain_of_pool_conv_blocks():
    crp = ChainedResidualPooling(2, blocks=2)
    x = torch.randn(1, 2, 9, 9)
    with torch.no_grad():
        relu = x.clamp(min=0)
        first = crp.blocks[0](relu)
        expected = relu + first + crp.blocks[1](first)
        torch.testing.assert_close(crp(x), expected)
        pool, conv = crp.blocks[0]
        assert (pool.kernel_size, pool.stride, pool.padding) == (5, 1, 2)
        assert conv.kernel_size == (3, 3)


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (97, 31)])
def test_output_is_at_input_resolution(size):
    model = refinenet(num_classes=4, backbone="resnet18", features=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size))["out"].shape == (1, 4, *size)


@pytest.mark.slow
def test_refinenet_learns_texture_orientation_and_a_per_pixel_control_does_not():
    """ResNet-18 trunk (same RefineNet code as ResNet-50/101/152), 1/4-resolution output,
    24-36 px objects; measured about 0.87 mIoU after 40 steps, the control about 0.18."""
    torch.manual_seed(0)
    model = refinenet(num_classes=3, backbone="resnet18", features=16)
    task = {"steps": 40, "lr": 1e-3, "size": 64, "sides": (24, 36)}
    assert train_and_score(model, **task) > 0.7
    assert train_and_score(PerPixel(), **task) < 0.4
