"""The RefineNet seed's network (a Chainer 4-cascaded RefineNet), layer for layer.

The seed implements RefineNet differently from the paper's released models (`refinenet.py`),
so its snapshots need this network to give their outputs (`segworks import-weights`):

- the encoder is the MSRA/Caffe ResNet of chainer-ResNet: stride in the first 1x1 convolution
  of a stage, a 3x3 max-pool at stride 2 without padding in ceil mode (Chainer's `cover_all`);
- each ResNet stage is adapted by a 1x1 convolution (256 channels, 512 for the 1/32 stage);
- a RefineNet block: two RCUs on the stage path, two RCUs on the coarser path; fusion is a 3x3
  convolution of the stage path plus a 3x3 convolution of the coarser path upsampled x2 by a
  learned 4x4 transposed convolution; chained residual pooling with two pool-conv blocks; one
  output RCU. The 1/32 block has one path (its fusion is the 3x3 convolution alone) and a 1x1
  convolution from 512 to 256 channels after it;
- the head applies one RCU twice (the seed defines a second RCU it never calls), upsamples x4
  with a learned 8x8 transposed convolution and classifies with a 1x1 convolution.

Inputs whose sides are multiples of 32 give exactly the seed's maps. Other sizes (the seed
fails on them) are aligned by bilinear resizing where a transposed convolution misses the
stage's size, so the output is always at input resolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segworks.models.backbones import ResNetEncoder, resnet_encoder
from segworks.models.refinenet import ChainedResidualPooling, ResidualConvUnit

__all__ = [
    "SeedFusion",
    "SeedRefineNet",
    "SeedRefineNetBlock",
    "refinenet_seed",
    "refinenet_seed_resnet50",
    "refinenet_seed_resnet101",
    "refinenet_seed_resnet152",
]


def _resize_to(x: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Bilinear resize to `size`. While tracing (export) it always resizes, an identity at equal
    sizes, so the traced graph does not keep the shortcut taken at the example size."""
    if size is None or (not torch.jit.is_tracing() and x.shape[-2:] == size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SeedFusion(nn.Module):
    """conv3x3(x) + up2(conv3x3(y)), or conv3x3(x) alone for a single path."""

    def __init__(self, channels: int, two_paths: bool):
        super().__init__()
        self.conv_x = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_y = nn.Conv2d(channels, channels, 3, padding=1) if two_paths else None
        self.up = (
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1) if two_paths else None
        )

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        if self.conv_y is None or y is None:
            return self.conv_x(x)
        return self.conv_x(x) + _resize_to(self.up(self.conv_y(y)), x.shape[-2:])


class SeedRefineNetBlock(nn.Module):
    """Two RCUs per path, fusion, chained residual pooling (2 blocks), one output RCU."""

    def __init__(self, channels: int, two_paths: bool):
        super().__init__()
        self.rcus_x = nn.Sequential(ResidualConvUnit(channels), ResidualConvUnit(channels))
        self.rcus_y = (
            nn.Sequential(ResidualConvUnit(channels), ResidualConvUnit(channels))
            if two_paths
            else None
        )
        self.fusion = SeedFusion(channels, two_paths)
        self.crp = ChainedResidualPooling(channels, blocks=2)
        self.output_conv = ResidualConvUnit(channels)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        x = self.rcus_x(x)
        if self.rcus_y is not None and y is not None:
            y = self.rcus_y(y)
        return self.output_conv(self.crp(self.fusion(x, y)))


class SeedRefineNet(nn.Module):
    """The seed's RefineResNet; forward returns {"out": logits at input size}."""

    def __init__(self, backbone: ResNetEncoder, num_classes: int, features: int = 256):
        super().__init__()
        self.backbone = backbone
        top = 2 * features
        widths = (features, features, features, top)
        self.adapt = nn.ModuleList(
            nn.Conv2d(channels, width, 1) for channels, width in zip(backbone.channels, widths)
        )
        self.refine4 = SeedRefineNetBlock(top, two_paths=False)
        self.reduce4 = nn.Conv2d(top, features, 1)
        self.refine3 = SeedRefineNetBlock(features, two_paths=True)
        self.refine2 = SeedRefineNetBlock(features, two_paths=True)
        self.refine1 = SeedRefineNetBlock(features, two_paths=True)
        self.head = ResidualConvUnit(features)
        self.upsample = nn.ConvTranspose2d(features, features, 8, stride=4, padding=2)
        self.classifier = nn.Conv2d(features, num_classes, 1)
        self.classifier_names = ("classifier",)

    def reset_classifier(self) -> None:
        self.classifier.reset_parameters()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        stages = self.backbone(x)
        l1, l2, l3, l4 = (adapt(stages[f"layer{i}"]) for i, adapt in enumerate(self.adapt, 1))
        y = self.reduce4(self.refine4(l4))
        y = self.refine3(l3, y)
        y = self.refine2(l2, y)
        y = self.refine1(l1, y)
        y = self.upsample(self.head(self.head(y)))
        return {"out": _resize_to(self.classifier(y), size)}


def refinenet_seed(
    *,
    num_classes: int,
    in_channels: int = 3,
    backbone: str = "resnet101",
    features: int = 256,
) -> SeedRefineNet:
    """The RefineNet seed's Chainer network on `backbone` (resnet50/101/152; 18/34 for tests).

    Snapshots of the seed load into it with `segworks import-weights`."""
    if num_classes < 1 or features < 1:
        raise ValueError(f"num_classes {num_classes} and features {features} must be positive")
    encoder = resnet_encoder(name=backbone, in_channels=in_channels, caffe_stride=True)
    encoder.maxpool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
    return SeedRefineNet(encoder, num_classes, features)


def refinenet_seed_resnet50(*, num_classes: int, **kwargs) -> SeedRefineNet:
    """The RefineNet seed's network on ResNet-50; keyword arguments as `refinenet_seed`."""
    return refinenet_seed(num_classes=num_classes, backbone="resnet50", **kwargs)


def refinenet_seed_resnet101(*, num_classes: int, **kwargs) -> SeedRefineNet:
    """The RefineNet seed's network (its default ResNet-101); arguments as `refinenet_seed`."""
    return refinenet_seed(num_classes=num_classes, backbone="resnet101", **kwargs)


def refinenet_seed_resnet152(*, num_classes: int, **kwargs) -> SeedRefineNet:
    """The RefineNet seed's network on ResNet-152; keyword arguments as `refinenet_seed`."""
    return refinenet_seed(num_classes=num_classes, backbone="resnet152", **kwargs)
