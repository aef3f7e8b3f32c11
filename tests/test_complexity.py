"""Parameter and MAC counts against published figures and against hand counts."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from segworks.models import build_model
from segworks.models.complexity import count_params_and_macs


def on_meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, num_classes=21, **kwargs)


def test_a_convolution_is_counted_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    params, macs = count_params_and_macs(conv, size=(10, 12))
    assert params == 8 * 3 * 9 + 8
    assert macs == 8 * 3 * 9 * 10 * 12


@pytest.mark.parametrize(
    "name, kwargs, published_params, published_gmacs, tolerance",
    [
        # DeepLabV3-R101 at output stride 8 without the aux head: ~241 GMAC at 512x512
        ("deeplabv3_resnet101", {}, 58.6e6, 241, 0.01),
        # 4-cascaded RefineNet-R101: about 118 M parameters and ~263 GMAC at 512x512
        ("refinenet_resnet101", {}, 118e6, 263, 0.01),
        # FCN-8s VGG16: about 134 M parameters (VGG16 convs 14.7 M + fc6/fc7 as convs 119.6 M);
        # no MAC figure is published for 512x512, the pad-100 geometry costs ~70 % more
        ("fcn8s", {}, 134e6, None, 0.01),
    ],
)
def test_counts_match_published_figures(name, kwargs, published_params, published_gmacs, tolerance):
    params, macs = count_params_and_macs(on_meta(name, **kwargs), size=(512, 512))
    assert params == pytest.approx(published_params, rel=tolerance)
    if published_gmacs is not None:
        assert macs / 1e9 == pytest.approx(published_gmacs, rel=tolerance)


def test_deeplabv3_parameters_equal_torchvision_without_aux_and_aux_is_not_counted():
    with torch.device("meta"):
        reference = torchvision.models.segmentation.deeplabv3_resnet50(
            weights=None, weights_backbone=None, aux_loss=False, num_classes=21
        )
    params, macs = count_params_and_macs(on_meta("deeplabv3_resnet50", aux_loss=True))
    assert params == sum(p.numel() for p in reference.parameters())
    assert (params, macs) == count_params_and_macs(on_meta("deeplabv3_resnet50", aux_loss=False))


def test_pad100_costs_more_and_output_stride_16_costs_less():
    _, compact = count_params_and_macs(on_meta("fcn8s"), size=(256, 256))
    _, pad100 = count_params_and_macs(on_meta("fcn8s", pad100=True), size=(256, 256))
    assert pad100 > 1.5 * compact
    _, os8 = count_params_and_macs(on_meta("deeplabv3_resnet50"), size=(256, 256))
    _, os16 = count_params_and_macs(
        on_meta("deeplabv3_resnet50", output_stride=16), size=(256, 256)
    )
    assert os16 < 0.5 * os8


def test_counting_leaves_a_real_model_untouched():
    torch.manual_seed(0)
    model = build_model("deeplabv3", num_classes=3, backbone="resnet18", output_stride=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    count_params_and_macs(model, size=(64, 64))
    assert model.aux_classifier is not None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="size"):
        count_params_and_macs(model, size=(0, 64))
