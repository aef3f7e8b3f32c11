"""4-cascaded 1-scale RefineNet (Lin, Milan, Shen and Reid, CVPR 2017) on a ResNet.

The ResNet's four stages (1/4 .. 1/32) feed four RefineNet blocks, coarsest first:
RefineNet-4 takes layer4, RefineNet-3 takes layer3 and RefineNet-4's output, and so on down to
RefineNet-1 at 1/4 resolution, whose output passes two more RCUs and a 1x1 classifier
(dropout 0.5 before it) and is upsampled bilinearly to the input size.

Each block, as in the paper's Fig. 2:
- adaptive convolution: every input path passes two residual conv units (RCU: ReLU-conv3x3-
  ReLU-conv3x3 plus identity); ResNet stages first go through a 3x3 convolution to 512 channels
  for RefineNet-4 and 256 for the others (`features` = 256 below);
- multi-resolution fusion (several inputs only): a 3x3 convolution per path to the block's width,
  bilinear upsampling to the largest input, and a sum;
- chained residual pooling: ReLU, then a chain of blocks (5x5 max-pool at stride 1, then a 3x3
  convolution), each block's output added to the running sum. Fig. 2 draws two blocks; the
  authors' released (improved) models use four, which we implement (`crp_blocks=4`): with four,
  ResNet-101 gives the ~118 M parameters published for it;
- output convolution: one RCU.
Convolutions in the refinement path have biases and no normalisation, as in the paper.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from segworks.models.backbones import ResNetEncoder, resnet_encoder
from segworks.models.weights import load_weights

__all__ = [
    "ChainedResidualPooling",
    "MultiResolutionFusion",
    "RefineNet",
    "RefineNetBlock",
    "ResidualConvUnit",
    "refinenet",
    "refinenet_resnet50",
    "refinenet_resnet101",
    "refinenet_resnet152",
]


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class ResidualConvUnit(nn.Module):
    """RCU: x + conv(relu(conv(relu(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.conv2 = _conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class MultiResolutionFusion(nn.Module):
    """A 3x3 convolution per path, upsampling to the largest path, sum."""

    def __init__(self, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        self.convs = nn.ModuleList(_conv3x3(channels, out_channels) for channels in in_channels)

    def forward(self, paths: Sequence[Tensor]) -> Tensor:
        size = max((path.shape[-2:] for path in paths), key=lambda s: s[0] * s[1])
        total = None
        for conv, path in zip(self.convs, paths):
            x = conv(path)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            total = x if total is None else total + x
        return total


class ChainedResidualPooling(nn.Module):
    """ReLU, then x + b1(x) + b2(b1(x)) + ... with each block a 5x5 max-pool and a 3x3 conv."""

    def __init__(self, channels: int, blocks: int = 4):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(5, stride=1, padding=2), _conv3x3(channels, channels))
            for _ in range(blocks)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        total, path = x, x
        for block in self.blocks:
            path = block(path)
            total = total + path
        return total


class RefineNetBlock(nn.Module):
    """Paths -> 2 RCUs each -> fusion (if several) -> chained residual pooling -> 1 RCU."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, crp_blocks: int = 4):
        super().__init__()
        self.rcus = nn.ModuleList(
            nn.Sequential(ResidualConvUnit(channels), ResidualConvUnit(channels))
            for channels in in_channels
        )
        self.fusion = (
            MultiResolutionFusion(in_channels, out_channels) if len(in_channels) > 1 else None
        )
        self.crp = ChainedResidualPooling(out_channels, crp_blocks)
        self.output_conv = ResidualConvUnit(out_channels)

    def forward(self, paths: Sequence[Tensor]) -> Tensor:
        paths = [rcu(path) for rcu, path in zip(self.rcus, paths)]
        x = self.fusion(paths) if self.fusion is not None else paths[0]
        return self.output_conv(self.crp(x))


class RefineNet(nn.Module):
    """4-cascaded RefineNet over a ResNet encoder; forward returns {"out": logits at input size}."""

    def __init__(
        self, backbone: ResNetEncoder, num_classes: int, features: int = 256, crp_blocks: int = 4
    ):
        super().__init__()
        self.backbone = backbone
        top = 2 * features
        widths = (features, features, features, top)
        self.adapt = nn.ModuleList(
            _conv3x3(channels, width) for channels, width in zip(backbone.channels, widths)
        )
        self.refine4 = RefineNetBlock([top], top, crp_blocks)
        self.refine3 = RefineNetBlock([top, features], features, crp_blocks)
        self.refine2 = RefineNetBlock([features, features], features, crp_blocks)
        self.refine1 = RefineNetBlock([features, features], features, crp_blocks)
        self.head = nn.Sequential(ResidualConvUnit(features), ResidualConvUnit(features))
        self.dropout = nn.Dropout(0.5)
        self.classifier = nn.Conv2d(features, num_classes, 1)
        self.classifier_names = ("classifier",)

    def reset_classifier(self) -> None:
        self.classifier.reset_parameters()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        stages = self.backbone(x)
        l1, l2, l3, l4 = (adapt(stages[f"layer{i}"]) for i, adapt in enumerate(self.adapt, 1))
        y = self.refine4([l4])
        y = self.refine3([y, l3])
        y = self.refine2([y, l2])
        y = self.refine1([y, l1])
        y = self.classifier(self.dropout(self.head(y)))
        return {"out": F.interpolate(y, size=size, mode="bilinear", align_corners=False)}


def refinenet(
    *,
    num_classes: int,
    in_channels: int = 3,
    backbone: str = "resnet101",
    features: int = 256,
    crp_blocks: int = 4,
    backbone_weights: Path | str | None = None,
    weights: Path | str | None = None,
) -> RefineNet:
    """RefineNet on `backbone` (resnet50/101/152; resnet18/34 for small experiments).

    `features` is the width of RefineNet-3..1 (RefineNet-4 has twice as many), 256 in the paper.
    """
    if num_classes < 1 or features < 1 or crp_blocks < 0:
        raise ValueError(
            f"num_classes {num_classes}, features {features} must be positive and "
            f"crp_blocks {crp_blocks} non-negative"
        )
    encoder = resnet_encoder(name=backbone, in_channels=in_channels, weights=backbone_weights)
    model = RefineNet(encoder, num_classes, features, crp_blocks)
    if weights is not None:
        load_weights(model, weights)
    return model


def refinenet_resnet50(*, num_classes: int, **kwargs) -> RefineNet:
    """RefineNet-ResNet50; keyword arguments as `refinenet`."""
    return refinenet(num_classes=num_classes, backbone="resnet50", **kwargs)


def refinenet_resnet101(*, num_classes: int, **kwargs) -> RefineNet:
    """RefineNet-ResNet101 (the RefineNet seed's model); keyword arguments as `refinenet`."""
    return refinenet(num_classes=num_classes, backbone="resnet101", **kwargs)


def refinenet_resnet152(*, num_classes: int, **kwargs) -> RefineNet:
    """RefineNet-ResNet152; keyword arguments as `refinenet`."""
    return refinenet(num_classes=num_classes, backbone="resnet152", **kwargs)
