"""FCN-VGG16: torchvision parity of the encoder, the derived geometry, staged training, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import PerPixel, train_and_score
from torch import nn

from segworks.checkpoint import save_checkpoint
from segworks.errors import DataError
from segworks.models.backbones import VGG16Encoder, vgg16_encoder
from segworks.models.fcn import bilinear_kernel, fcn8s, fcn16s, fcn32s


@torch.no_grad()
def test_vgg16_encoder_with_torchvision_weights_matches_torchvision_features_and_fc7():
    torch.manual_seed(0)
    reference = torchvision.models.vgg16().eval()
    encoder = VGG16Encoder().eval()
    encoder.load_state_dict(encoder.from_torchvision(reference.state_dict()))
    x = torch.randn(1, 3, 224, 224)
    ours = encoder(x)
    assert torch.equal(ours["pool3"], reference.features[:17](x))
    assert torch.equal(ours["pool4"], reference.features[:24](x))
    # fc6 as a 7x7 "same" convolution: its centre unit sees all of pool5, as the Linear layer does
    expected_fc7 = reference.classifier[:5](torch.flatten(reference.features(x), 1))
    torch.testing.assert_close(ours["fc7"][0, :, 3, 3], expected_fc7[0], rtol=1e-4, atol=1e-5)


def test_backbone_weights_file_errors_list_missing_unexpected_and_mismatched_keys(tmp_path):
    encoder = VGG16Encoder(width=4, fc_channels=8)
    state = {f"features.{k}": v for k, v in encoder.features.state_dict().items()}
    del state["features.0.bias"]
    state["features.2.weight"] = torch.zeros(4, 4, 5, 5)
    state["features.99.weight"] = torch.zeros(1)
    path = tmp_path / "vgg16-bad.pth"
    torch.save(state, path)
    with pytest.raises(DataError) as error:
        vgg16_encoder(width=4, fc_channels=8, weights=path)
    message = str(error.value)
    assert "vgg16-bad.pth" in message and "features.0.bias" in message and "fc6.weight" in message
    assert "features.2.weight (4, 4, 5, 5) in file vs (4, 4, 3, 3)" in message
    assert "1 unexpected keys: features.99.weight" in message


def test_bilinear_transposed_convolution_equals_bilinear_interpolation_inside():
    x = torch.randn(1, 2, 6, 7)
    up = F.conv_transpose2d(x, bilinear_kernel(2, 4), stride=2, padding=1)
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])


def receptive_field_centre(encoder: VGG16Encoder, name: str, size: int) -> tuple[int, float]:
    """(index, input column at the centre of its receptive field) of a middle unit of map
    `name`, measured from gradients of a positive network with average pooling (a linear map
    whose support is exactly the receptive field)."""
    for index, module in enumerate(encoder.features):
        if isinstance(module, nn.MaxPool2d):
            encoder.features[index] = nn.AvgPool2d(2, 2, ceil_mode=module.ceil_mode)
    for parameter in encoder.parameters():
        nn.init.constant_(parameter, 0.01)
    x = torch.ones(1, 3, size, size, requires_grad=True)
    feature = encoder.eval()(x)[name]
    middle = feature.shape[-1] // 2
    feature[0, 0, feature.shape[-2] // 2, middle].backward()
    columns = x.grad[0, 0].abs().sum(0).nonzero().flatten()
    return middle, (columns.min().item() + columns.max().item()) / 2


@pytest.mark.parametrize(
    "pad100, offsets",
    [
        (True, {"pool3": (8, -95.5), "pool4": (16, -91.5), "fc7": (32, 12.5)}),
        (False, {"pool3": (8, 3.5), "pool4": (16, 7.5), "fc7": (32, 15.5)}),
    ],
)
def test_feature_map_units_sit_where_the_documented_geometry_says(pad100, offsets):
    for name, (stride, offset) in offsets.items():
        encoder = VGG16Encoder(pad100=pad100, width=1, fc_channels=1)
        index, centre = receptive_field_centre(encoder, name, 512)
        assert centre == stride * index + offset, name


class RampBackbone(nn.Module):
    """Stands in for VGG16: each map holds, at every unit, the input column of its centre."""

    def __init__(self, real: VGG16Encoder, geometry: dict[str, tuple[int, float]], size: int):
        super().__init__()
        with torch.no_grad():
            self.shapes = {
                k: v.shape for k, v in real.eval()(torch.zeros(1, 3, size, size)).items()
            }
        self.geometry = geometry

    def forward(self, x):
        maps = {}
        for name, shape in self.shapes.items():
            stride, offset = self.geometry[name]
            columns = stride * torch.arange(shape[-1], dtype=torch.float64) + offset
            maps[name] = columns.expand(shape).float()
        return maps


@pytest.mark.parametrize("builder, fused", [(fcn32s, 1), (fcn16s, 2), (fcn8s, 3)])
@pytest.mark.parametrize(
    "pad100, geometry",
    [
        (True, {"pool3": (8, -95.5), "pool4": (16, -91.5), "fc7": (32, 12.5)}),
        (False, {"pool3": (8, 3.5), "pool4": (16, 7.5), "fc7": (32, 15.5)}),
    ],
)
@torch.no_grad()
def test_skips_and_output_are_cropped_onto_the_right_pixels(builder, fused, pad100, geometry):
    """Score maps holding their own pixel columns, fused and upsampled with the model's crops,
    must give every output column its own index (times the number of fused maps)."""
    size = 256
    model = builder(num_classes=1, pad100=pad100, width=1, fc_channels=1)
    model.backbone = RampBackbone(model.backbone, geometry, size)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        if hasattr(model, name):
            layer = getattr(model, name)
            nn.init.constant_(layer.weight, 1 / layer.in_channels)
            nn.init.zeros_(layer.bias)
    out = model(torch.zeros(1, 3, size, size))["out"][0, 0, size // 2]
    inside = slice(48, size - 48)
    expected = fused * torch.arange(size, dtype=torch.float32)
    torch.testing.assert_close(out[inside], expected[inside], rtol=0, atol=1e-3)


@pytest.mark.parametrize("builder", [fcn32s, fcn16s, fcn8s])
@pytest.mark.parametrize("pad100", [False, True])
def test_output_has_the_input_size(builder, pad100):
    model = builder(num_classes=4, pad100=pad100, width=2, fc_channels=8).eval()
    with torch.no_grad():
        for size in [(1, 1), (31, 33), (64, 97)]:
            assert model(torch.randn(1, 3, *size))["out"].shape == (1, 4, *size)


def test_fc6_fc7_are_kept_and_score_layers_start_at_zero():
    with torch.device("meta"):
        model = fcn8s(num_classes=21)
    assert model.backbone.fc6.weight.shape == (4096, 512, 7, 7)
    assert model.backbone.fc7.weight.shape == (4096, 4096, 1, 1)
    assert model.classifier_names == (
        "score_fr",
        "score_pool4",
        "upscore2",
        "score_pool3",
        "upscore_pool4",
        "upscore8",
    )
    small = fcn8s(num_classes=3, width=2, fc_channels=4)
    assert small.score_pool3.weight.abs().sum() == 0
    assert torch.equal(small.upscore8.weight, bilinear_kernel(3, 16))


def test_staged_training_initialises_16s_from_32s_and_8s_from_16s(tmp_path):
    torch.manual_seed(0)
    kwargs = {"num_classes": 3, "width": 2, "fc_channels": 8}
    coarse = fcn32s(**kwargs)
    for parameter in coarse.parameters():
        nn.init.normal_(parameter)
    save_checkpoint(tmp_path / "fcn32s.pt", {"model": coarse.state_dict()})
    middle = fcn16s(**kwargs, init_from=tmp_path / "fcn32s.pt")
    assert torch.equal(middle.score_fr.weight, coarse.score_fr.weight)
    assert torch.equal(middle.backbone.fc6.weight, coarse.backbone.fc6.weight)
    assert middle.score_pool4.weight.abs().sum() == 0  # the new skip starts silent
    nn.init.normal_(middle.score_pool4.weight)
    torch.save(middle.state_dict(), tmp_path / "fcn16s.pth")
    fine = fcn8s(**kwargs, init_from=tmp_path / "fcn16s.pth")
    assert torch.equal(fine.score_pool4.weight, middle.score_pool4.weight)
    assert torch.equal(fine.upscore2.weight, middle.upscore2.weight)
    assert fine.score_pool3.weight.abs().sum() == 0
    with pytest.raises(DataError, match="score_fr.weight"):
        fcn16s(num_classes=5, width=2, fc_channels=8, init_from=tmp_path / "fcn32s.pt")


@pytest.mark.slow
def test_fcn8s_learns_texture_orientation_and_a_per_pixel_control_does_not():
    """VGG16 at 1/8 width (same FCN code), stride-8 skips, 24-36 px objects; measured about
    0.87 mIoU after 200 steps (the zero-initialised score layers make it a slow starter)."""
    torch.manual_seed(0)
    model = fcn8s(num_classes=3, width=8, fc_channels=64)
    task = {"steps": 200, "lr": 1e-3, "size": 64, "sides": (24, 36)}
    assert train_and_score(model, **task) > 0.7
    assert train_and_score(PerPixel(), **task) < 0.4


@pytest.mark.parametrize("padding", [0, 3])
def test_fc6_trains_as_a_matrix_product_with_the_gradients_of_a_convolution(padding):
    from segworks.models.backbones import MatmulConv2d

    torch.manual_seed(0)
    ours = MatmulConv2d(6, 5, 7, padding=padding).train()
    reference = torch.nn.Conv2d(6, 5, 7, padding=padding)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 9, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = ours(x), reference(x_ref)
    grad = torch.randn_like(out_ref)
    (out * grad).sum().backward()
    (out_ref * grad).sum().backward()
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad, reference.bias.grad)
    with torch.no_grad():  # evaluation is the plain convolution, bit for bit
        assert torch.equal(ours.eval()(x), reference(x))
