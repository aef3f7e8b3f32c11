"""DeepLabV3+ (Chen, Zhu, Papandreou, Schroff and Adam, 2018, "Encoder-Decoder with Atrous
Separable Convolution for Semantic Image Segmentation") on an ImageNet encoder.

The encoder (one of `segworks.models.encoders`: ResNet, MobileNetV2, EfficientNet-Lite) keeps
1/16 of the resolution: the stride of its last stage is traded for dilation. DeepLabV3's atrous
spatial pyramid pooling (`segworks.models.deeplabv3.ASPP`: a 1x1 branch, 3x3 branches at rates
6/12/18, image pooling, a 1x1 projection with dropout 0.5) runs on that deepest level. The
decoder upsamples the ASPP output bilinearly to the 1/4 level, concatenates it with the 1/4
features reduced to 48 channels (1x1 convolution, BatchNorm, ReLU), refines the result with two
3x3 convolution - BatchNorm - ReLU layers of 256 channels (the paper's best decoder, its Table 2),
and a 1x1 convolution gives the class logits, upsampled bilinearly to the input size.

The paper's Xception variant replaces the 3x3 convolutions by depthwise-separable ones; this
file uses dense ones, as the paper does for ResNet-101. segmentation_models.pytorch's
`DeepLabV3Plus` differs in layout (an extra separable 3x3 after ASPP, one separable 3x3 in the
decoder, fixed 4x upsampling), so its state dicts do not load here.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segworks.errors import SegworksError
from segworks.models.deeplabv3 import ASPP, ATROUS_RATES
from segworks.models.encoders import ENCODERS, build_encoder

__all__ = [
    "DeepLabV3Plus",
    "deeplabv3plus",
    "deeplabv3plus_efficientnet_lite0",
    "deeplabv3plus_efficientnet_lite2",
    "deeplabv3plus_mobilenet_v2",
    "deeplabv3plus_resnet101",
    "deeplabv3plus_resnet50",
]

OUTPUT_STRIDE = 16
SKIP_LEVEL = 1  # index of the 1/4 level in an encoder's pyramid (1/2, 1/4, ..., 1/16)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DeepLabV3Plus(nn.Module):
    """Encoder -> ASPP on 1/16 -> upsample, concatenate reduced 1/4 features -> two 3x3 ->
    1x1 classifier; {"out": logits at input size}."""

    classifier_names = ("classifier",)

    def __init__(
        self,
        encoder: nn.Module,
        aspp: ASPP,
        skip: nn.Module,
        fuse: nn.Module,
        classifier: nn.Conv2d,
    ):
        super().__init__()
        self.encoder = encoder
        self.aspp = aspp
        self.skip = skip
        self.fuse = fuse
        self.classifier = classifier

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        levels = self.encoder.pyramid(x)
        low = self.skip(levels[SKIP_LEVEL])
        high = _resize(self.aspp(levels[-1]), low.shape[-2:])
        logits = self.classifier(self.fuse(torch.cat([high, low], dim=1)))
        return {"out": _resize(logits, x.shape[-2:])}

    @torch.no_grad()
    def reset_classifier(self) -> None:
        self.classifier.reset_parameters()


def _resize(x: Tensor, size: torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def deeplabv3plus(
    *,
    num_classes: int,
    encoder: str = "resnet50",
    in_channels: int = 3,
    aspp_channels: int = 256,
    skip_channels: int = 48,
    decoder_channels: int = 256,
    backbone_weights: Path | str | None = None,
) -> DeepLabV3Plus:
    """DeepLabV3+ (Chen et al., 2018) on an encoder of `segworks.models.encoders`, output stride 16.

    `aspp_channels` is the ASPP width, `skip_channels` the width the 1/4 features are reduced to
    (48 in the paper), `decoder_channels` the width of the two 3x3 decoder convolutions.
    `backbone_weights` is the encoder's ImageNet state dict file.
    """
    if encoder not in ENCODERS:
        raise SegworksError(
            f"encoder {encoder!r} is not supported; expected one of {list(ENCODERS)}"
        )
    widths = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "aspp_channels": aspp_channels,
        "skip_channels": skip_channels,
        "decoder_channels": decoder_channels,
    }
    for name, value in widths.items():
        if not isinstance(value, int) or value < 1:
            raise SegworksError(f"{name} must be a positive integer, got {value!r}")
    body = build_encoder(
        encoder, output_stride=OUTPUT_STRIDE, in_channels=in_channels, weights=backbone_weights
    )
    channels = body.pyramid_channels
    return DeepLabV3Plus(
        body,
        ASPP(channels[-1], ATROUS_RATES[OUTPUT_STRIDE], aspp_channels),
        _conv_bn_relu(channels[SKIP_LEVEL], skip_channels, 1),
        nn.Sequential(
            _conv_bn_relu(aspp_channels + skip_channels, decoder_channels, 3),
            _conv_bn_relu(decoder_channels, decoder_channels, 3),
        ),
        nn.Conv2d(decoder_channels, num_classes, 1),
    )


def deeplabv3plus_resnet50(*, num_classes: int, **kwargs) -> DeepLabV3Plus:
    """DeepLabV3+ on ResNet-50; keyword arguments as `deeplabv3plus`."""
    return deeplabv3plus(num_classes=num_classes, encoder="resnet50", **kwargs)


def deeplabv3plus_resnet101(*, num_classes: int, **kwargs) -> DeepLabV3Plus:
    """DeepLabV3+ on ResNet-101 (the paper's ResNet model); keyword arguments as `deeplabv3plus`."""
    return deeplabv3plus(num_classes=num_classes, encoder="resnet101", **kwargs)


def deeplabv3plus_mobilenet_v2(*, num_classes: int, **kwargs) -> DeepLabV3Plus:
    """DeepLabV3+ on torchvision's MobileNetV2; keyword arguments as `deeplabv3plus`."""
    return deeplabv3plus(num_classes=num_classes, encoder="mobilenet_v2", **kwargs)


def deeplabv3plus_efficientnet_lite0(*, num_classes: int, **kwargs) -> DeepLabV3Plus:
    """DeepLabV3+ on EfficientNet-Lite0 (timm); keyword arguments as `deeplabv3plus`."""
    return deeplabv3plus(num_classes=num_classes, encoder="efficientnet_lite0", **kwargs)


def deeplabv3plus_efficientnet_lite2(*, num_classes: int, **kwargs) -> DeepLabV3Plus:
    """DeepLabV3+ on EfficientNet-Lite2 (timm); keyword arguments as `deeplabv3plus`."""
    return deeplabv3plus(num_classes=num_classes, encoder="efficientnet_lite2", **kwargs)
