"""DeepLabV3+: geometry on every encoder, gradients, batch independence, ImageNet weights, and one
forward checked against smp's ASPP plus a decoder computed by hand.

smp's `DeepLabV3Plus` has another decoder layout (a separable 3x3 after ASPP, one separable 3x3
after the concatenation, fixed 4x upsampling), so its whole state dict cannot load here; its ASPP
(with `separable=False`) has our ASPP's module names, which the parity test uses.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import randomise_batchnorm
from torch import nn

from segworks.checkpoint import load_checkpoint
from segworks.cli import main
from segworks.data.synthetic import write_shapes_dataset
from segworks.errors import SegworksError
from segworks.models import MODELS
from segworks.models.deeplabv3plus import DeepLabV3Plus, deeplabv3plus
from segworks.models.encoders import ENCODERS, lite_to_timm
from segworks.models.pretrained import MODEL_ENCODERS, WEIGHTS, status, weights_file
from segworks.models.weights import read_state_dict

TINY = {"aspp_channels": 8, "skip_channels": 4, "decoder_channels": 8}


def tiny(encoder: str, seed: int = 0, **kwargs) -> DeepLabV3Plus:
    torch.manual_seed(seed)
    return deeplabv3plus(num_classes=3, encoder=encoder, **(TINY | kwargs))


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_logits_at_odd_input_sizes_on_every_encoder(encoder):
    model = tiny(encoder).eval()
    with torch.no_grad():
        for size in [(37, 53), (50, 33)]:
            out = model(torch.randn(1, 3, *size))
            assert set(out) == {"out"}
            assert out["out"].shape == (1, 3, *size)
            assert torch.isfinite(out["out"]).all()


@pytest.mark.parametrize("encoder", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
def test_output_stride_is_16_and_the_skip_is_the_quarter_level(encoder):
    model = tiny(encoder)
    levels = model.encoder.pyramid(torch.randn(1, 3, 64, 96))
    assert levels[-1].shape[-2:] == (4, 6)  # 1/16, not 1/32
    assert levels[1].shape[-2:] == (16, 24)
    assert model.skip[0].in_channels == levels[1].shape[1]
    assert model.aspp.convs[0][0].in_channels == levels[-1].shape[1]


@pytest.mark.parametrize("encoder", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
def test_every_parameter_gets_a_gradient(encoder):
    model = tiny(encoder).train()
    out = model(torch.randn(2, 3, 33, 41))["out"]
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("encoder", ["resnet18", "efficientnet_lite0"])
def test_eval_output_does_not_depend_on_the_batch(encoder):
    model = tiny(encoder)
    randomise_batchnorm(model)
    batch = torch.randn(3, 3, 41, 47, generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch[1:2])["out"], model(batch)["out"][1:2])


def _conv_bn_relu(x: torch.Tensor, block: nn.Sequential) -> torch.Tensor:
    conv, norm = block[0], block[1]
    x = F.conv2d(x, conv.weight, padding=conv.kernel_size[0] // 2)
    x = F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, eps=1e-5)
    return F.relu(x)


def test_forward_equals_smp_aspp_and_a_decoder_computed_by_hand():
    smp_aspp = pytest.importorskip("segmentation_models_pytorch.decoders.deeplabv3.decoder").ASPP
    model = tiny("resnet18")
    randomise_batchnorm(model)
    model.eval()
    reference = smp_aspp(512, 8, (6, 12, 18), separable=False, dropout=0.5).eval()
    reference.load_state_dict(model.aspp.state_dict())  # strict: the same names and shapes
    x = torch.randn(2, 3, 70, 90, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        levels = model.encoder.pyramid(x)
        high = reference(levels[4])
        high = F.interpolate(high, size=levels[1].shape[-2:], mode="bilinear", align_corners=False)
        y = torch.cat([high, _conv_bn_relu(levels[1], model.skip)], dim=1)
        for block in model.fuse:
            y = _conv_bn_relu(y, block)
        logits = F.conv2d(y, model.classifier.weight, model.classifier.bias)
        expected = F.interpolate(logits, size=(70, 90), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x)["out"], expected)


def test_paper_widths_by_default():
    model = deeplabv3plus(num_classes=5, encoder="resnet18")
    assert model.skip[0].out_channels == 48
    assert [block[0].out_channels for block in model.fuse] == [256, 256]
    assert model.fuse[0][0].in_channels == 256 + 48
    assert [conv[0].dilation for conv in model.aspp.convs[1:4]] == [(6, 6), (12, 12), (18, 18)]
    assert model.classifier.out_channels == 5 and model.classifier_names == ("classifier",)


def _imagenet_file(name: str):
    if status(WEIGHTS[name]) != "installed":
        pytest.skip(f"the package shipping {name} weights is not installed")
    return weights_file(WEIGHTS[name], download=False)


@pytest.mark.parametrize("encoder", ["mobilenet_v2", "efficientnet_lite0"])
def test_imagenet_weights_from_the_installed_packages_load_into_the_encoder(encoder):
    path = _imagenet_file(encoder)
    model = tiny(encoder, backbone_weights=path)
    state = read_state_dict(path)
    if encoder.startswith("efficientnet"):
        state = lite_to_timm(state, model.encoder.stage_depths)
    own = model.encoder.state_dict()
    loaded = [key for key in own if key in state]
    assert len(loaded) >= 0.95 * len(own)
    for key in loaded:
        torch.testing.assert_close(own[key], state[key], rtol=0, atol=0, msg=key)
    scratch = tiny(encoder).encoder.state_dict()
    assert not torch.equal(scratch[loaded[0]], own[loaded[0]])


def test_reset_classifier_touches_only_the_classifier():
    model = tiny("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_classifier()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"classifier.weight", "classifier.bias"}


def test_registered_with_their_encoders_and_bad_arguments_are_named():
    for suffix in ("resnet50", "resnet101", "mobilenet_v2", "efficientnet_lite0"):
        assert MODEL_ENCODERS[f"deeplabv3plus_{suffix}"] == suffix
    assert MODELS["deeplabv3plus"] is deeplabv3plus
    with pytest.raises(SegworksError, match="encoder 'resnet35'"):
        deeplabv3plus(num_classes=2, encoder="resnet35")
    with pytest.raises(SegworksError, match="skip_channels must be a positive integer, got 0"):
        deeplabv3plus(num_classes=2, encoder="resnet18", skip_channels=0)


def test_cli_trains_deeplabv3plus_from_efficientnet_lite0_imagenet_weights(tmp_path, capsys):
    """`segworks models` lists it; `segworks train --pretrained efficientnet_lite0` starts from the
    ImageNet file, normalises with its statistics, and (encoder frozen for the one epoch) keeps
    those weights exactly."""
    path = _imagenet_file("efficientnet_lite0")
    assert main(["models", "deeplabv3plus_efficientnet_lite0"]) == 0
    assert "DeepLabV3+ on EfficientNet-Lite0" in capsys.readouterr().out
    data = write_shapes_dataset(tmp_path / "shapes", num_train=4, num_val=2, size=32)
    out = tmp_path / "run"
    flags = ["--model", "deeplabv3plus_efficientnet_lite0", "--pretrained", "efficientnet_lite0",
             "--freeze-backbone-epochs", "1", "--model-arg", "aspp_channels=8",
             "--model-arg", "decoder_channels=8", "-e", "1", "-b", "2", "--crop-size", "32",
             "-g", "-1", "--workers", "0", "--no-tensorboard", "--no-progress"]  # fmt: skip
    assert main(["train", "--data", str(data), "--out", str(out), *flags]) == 0
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["meta"]["mean"] == [0.5, 0.5, 0.5] == checkpoint["meta"]["std"]
    state = checkpoint["model"]
    imagenet = read_state_dict(path)
    torch.testing.assert_close(state["encoder.conv_stem.weight"], imagenet["_conv_stem.weight"])
    assert not torch.equal(state["classifier.weight"], tiny("efficientnet_lite0").classifier.weight)
