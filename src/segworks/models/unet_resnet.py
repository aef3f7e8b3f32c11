"""U-Net (Ronneberger, Fischer and Brox, 2015) on an ImageNet encoder, as the smp library builds it.

The encoder is one of `segworks.models.encoders` (torchvision's ResNets and MobileNetV2, timm's
EfficientNet-Lite) without its classifier. Its five outputs, at 1/2 (for a ResNet the stem: conv1,
BN, ReLU), 1/4, 1/8, 1/16 and 1/32 of the input, feed a decoder of five blocks. Each block
upsamples its input (nearest neighbour) to the size of the next shallower feature map, 2x for
sides that are multiples of 32, concatenates that skip feature after the upsampled map, and applies
two 3x3 convolution - BatchNorm - ReLU layers. The last block has no skip and upsamples to the
input size. A 3x3 convolution maps the last decoder width to the class logits. Decoder widths are
(256, 128, 64, 32, 16) by default.

This is the layout of segmentation_models.pytorch's `Unet(encoder_name="resnet34")` (version 0.3
onwards), and the modules carry its names (`encoder`, `decoder.blocks.N.conv1.0`,
`segmentation_head.0`), so an smp state dict loads unchanged; because the upsampling targets the
skip's size, any input size works (smp asks for multiples of 32).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segworks.errors import SegworksError
from segworks.models.encoders import ENCODERS, build_encoder

__all__ = [
    "DecoderBlock",
    "EncoderUNet",
    "UNetDecoder",
    "gate_by_presence",
    "unet_efficientnet_lite0",
    "unet_efficientnet_lite1",
    "unet_efficientnet_lite2",
    "unet_mobilenet_v2",
    "unet_resnet",
    "unet_resnet34",
]

DECODER_CHANNELS = (256, 128, 64, 32, 16)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DecoderBlock(nn.Module):
    """Upsample (nearest) to the skip's size, concatenate [upsampled, skip], two conv-BN-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = _conv_bn_relu(in_channels + skip_channels, out_channels)
        self.conv2 = _conv_bn_relu(out_channels, out_channels)

    def forward(self, x: Tensor, size: Sequence[int], skip: Tensor | None = None) -> Tensor:
        x = F.interpolate(x, size=tuple(size), mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetDecoder(nn.Module):
    """Five decoder blocks from the deepest feature map up to the input resolution."""

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int]):
        super().__init__()
        deepest, *skips = reversed(encoder_channels)  # 1/32 first, then 1/16 ... 1/2
        inputs = [deepest, *decoder_channels[:-1]]
        skip_channels = [*skips, 0]
        self.blocks = nn.ModuleList(
            DecoderBlock(c_in, c_skip, c_out)
            for c_in, c_skip, c_out in zip(inputs, skip_channels, decoder_channels)
        )

    def forward(self, features: list[Tensor], size: Sequence[int]) -> Tensor:
        """`features` shallow to deep (1/2 ... 1/32); `size` is the input's (H, W)."""
        x, *skips = reversed(features)
        targets: list[Tensor | None] = [*skips, None]
        for block, skip in zip(self.blocks, targets):
            x = block(x, size if skip is None else skip.shape[-2:], skip)
        return x


class EncoderUNet(nn.Module):
    """Encoder pyramid -> U-Net decoder -> 3x3 classifier; {"out": logits at input size}.

    With a class-presence head (smp's `aux_params` classification head, trained as EncNet's
    semantic encoding loss), the deepest feature map is averaged and a linear layer gives one
    logit per class, "does this class occur in the image" (`{"presence": [N, K]}`). With
    `presence_gate`, inference multiplies each pixel's class probabilities by the image's
    presence probabilities (`gate_by_presence`); training always sees the ungated logits.
    """

    classifier_names = ("segmentation_head", "presence_head")

    def __init__(
        self,
        encoder: nn.Module,
        decoder: UNetDecoder,
        num_classes: int,
        *,
        presence_head: bool = False,
        presence_gate: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        width = decoder.blocks[-1].conv2[0].out_channels
        self.segmentation_head = nn.Sequential(nn.Conv2d(width, num_classes, 3, padding=1))
        deepest = encoder.pyramid_channels[-1]
        self.presence_head = nn.Linear(deepest, num_classes) if presence_head else None
        self.presence_gate = presence_gate

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.encoder.pyramid(x)
        logits = self.segmentation_head(self.decoder(features, x.shape[-2:]))
        if self.presence_head is None:
            return {"out": logits}
        presence = self.presence_head(features[-1].mean(dim=(2, 3)))
        if self.presence_gate and not self.training:
            logits = gate_by_presence(logits, presence)
        return {"out": logits, "presence": presence}

    @torch.no_grad()
    def reset_classifier(self) -> None:
        self.segmentation_head[0].reset_parameters()
        if self.presence_head is not None:
            self.presence_head.reset_parameters()


def gate_by_presence(logits: Tensor, presence: Tensor) -> Tensor:
    """Logits whose softmax is ``p(k | pixel) * sigmoid(presence_k)``, renormalised: a class the
    image-level head finds absent loses its pixels to the next most likely class. One channel (a
    binary model, background present everywhere) is the same rule: ``logit + log sigmoid(presence)``.
    """
    gate = F.logsigmoid(presence.to(logits.dtype))[:, :, None, None]
    if logits.shape[1] == 1:
        return logits + gate
    return torch.log_softmax(logits, dim=1) + gate


def unet_resnet(
    *,
    num_classes: int,
    encoder: str = "resnet34",
    in_channels: int = 3,
    decoder_channels: Sequence[int] = DECODER_CHANNELS,
    backbone_weights: Path | str | None = None,
    presence_head: bool = False,
    presence_gate: bool = False,
) -> EncoderUNet:
    """U-Net on an encoder of `segworks.models.encoders`, smp's `Unet` layout.

    `decoder_channels` are the five decoder block widths, deepest first. `backbone_weights` is an
    ImageNet state dict file for the encoder (e.g. torchvision's `resnet34-b627a593.pth`).
    `presence_head` adds the image-level class-presence head (`EncoderUNet`), trained with the
    `presence_weight` of the training config; `presence_gate` uses it at inference.
    """
    if encoder not in ENCODERS:
        raise SegworksError(
            f"encoder {encoder!r} is not supported; expected one of {', '.join(ENCODERS)}"
        )
    decoder_channels = tuple(decoder_channels)
    if len(decoder_channels) != len(DECODER_CHANNELS):
        raise ValueError(f"decoder_channels must have 5 widths, got {decoder_channels}")
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if any(not isinstance(c, int) or c < 1 for c in decoder_channels):
        raise ValueError(f"decoder_channels must be positive integers, got {decoder_channels}")
    if presence_gate and not presence_head:
        raise SegworksError("presence_gate=True needs presence_head=True (the gate is its output)")
    backbone = build_encoder(encoder, in_channels=in_channels, weights=backbone_weights)
    decoder = UNetDecoder(backbone.pyramid_channels, decoder_channels)
    presence = {"presence_head": presence_head, "presence_gate": presence_gate}
    return EncoderUNet(backbone, decoder, num_classes, **presence)


def unet_resnet34(*, num_classes: int, **kwargs) -> EncoderUNet:
    """U-Net on ResNet-34 (smp's `Unet("resnet34")`); keyword arguments as `unet_resnet`."""
    return unet_resnet(num_classes=num_classes, encoder="resnet34", **kwargs)


def unet_mobilenet_v2(*, num_classes: int, **kwargs) -> EncoderUNet:
    """U-Net on torchvision's MobileNetV2; keyword arguments as `unet_resnet`."""
    return unet_resnet(num_classes=num_classes, encoder="mobilenet_v2", **kwargs)


def unet_efficientnet_lite0(*, num_classes: int, **kwargs) -> EncoderUNet:
    """U-Net on EfficientNet-Lite0 (timm); keyword arguments as `unet_resnet`."""
    return unet_resnet(num_classes=num_classes, encoder="efficientnet_lite0", **kwargs)


def unet_efficientnet_lite1(*, num_classes: int, **kwargs) -> EncoderUNet:
    """U-Net on EfficientNet-Lite1 (timm); keyword arguments as `unet_resnet`."""
    return unet_resnet(num_classes=num_classes, encoder="efficientnet_lite1", **kwargs)


def unet_efficientnet_lite2(*, num_classes: int, **kwargs) -> EncoderUNet:
    """U-Net on EfficientNet-Lite2 (timm); keyword arguments as `unet_resnet`."""
    return unet_resnet(num_classes=num_classes, encoder="efficientnet_lite2", **kwargs)
