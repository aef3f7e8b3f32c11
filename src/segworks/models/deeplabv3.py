"""DeepLabV3 (Chen, Papandreou, Schroff and Adam, 2017) on a dilated ResNet.

The ResNet keeps 1/16 or 1/8 of the resolution (strides traded for dilation in layer4, or layer3
and layer4). Atrous spatial pyramid pooling (ASPP) runs five branches in parallel on layer4's
output: a 1x1 convolution, three 3x3 atrous convolutions (rates 6/12/18 at output stride 16, twice
that at 8) and image pooling (global average, 1x1 convolution, upsampled back), each with
BatchNorm and ReLU and 256 channels; their concatenation is projected to 256 channels (1x1, BN,
ReLU, dropout 0.5). A 3x3 convolution (BN, ReLU) and a 1x1 classifier follow, and the logits are
upsampled bilinearly to the input size. An auxiliary FCN head on layer3 (3x3 conv to a quarter of
the channels, BN, ReLU, dropout 0.1, 1x1 classifier) adds deep supervision in training; its loss
weight (0.4 in the DeepLabV3 seed) belongs to the loss, not to the model.

The modules carry torchvision's names (`backbone`, `classifier.0.convs...`, `aux_classifier`), so
the state dict of torchvision's `deeplabv3_resnet50/101` loads unchanged and gives identical
outputs; torchvision builds its model at output stride 8 and so does `deeplabv3` by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segworks.models.backbones import ResNetEncoder, resnet_encoder
from segworks.models.weights import load_weights

__all__ = [
    "ASPP",
    "DeepLabHead",
    "DeepLabV3",
    "FCNHead",
    "deeplabv3",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
]

ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
    padding = dilation * (kernel_size // 2)
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
    )
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU()]


class ImagePooling(nn.Sequential):
    """ASPP's image-level branch: global average, 1x1 conv, BN, ReLU, upsampled back.

    Training on a batch of one image, the BatchNorm here sees one value per channel, which
    batch statistics cannot normalise (torchvision fails there); it then uses its running
    statistics, as in evaluation. Any other batch behaves exactly as torchvision's.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_channels, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pool, conv, norm, relu = self
        y = conv(pool(x))
        if norm.training and y.shape[0] == 1:
            y = F.batch_norm(
                y, norm.running_mean, norm.running_var, norm.weight, norm.bias, eps=norm.eps
            )
        else:
            y = norm(y)
        return F.interpolate(relu(y), size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Five parallel branches (1x1, three atrous 3x3, image pooling), concatenated, projected."""

    def __init__(self, in_channels: int, rates: Sequence[int], out_channels: int = 256):
        super().__init__()
        branches = [nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 1))]
        branches += [
            nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 3, rate)) for rate in rates
        ]
        branches.append(ImagePooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *_conv_bn_relu(len(branches) * out_channels, out_channels, 1), nn.Dropout(0.5)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    """ASPP, 3x3 conv-BN-ReLU, 1x1 classifier (index 4 is the classifier)."""

    def __init__(
        self, in_channels: int, num_classes: int, rates: Sequence[int], channels: int = 256
    ):
        super().__init__(
            ASPP(in_channels, rates, channels),
            *_conv_bn_relu(channels, channels, 3),
            nn.Conv2d(channels, num_classes, 1),
        )


class FCNHead(nn.Sequential):
    """The auxiliary head: 3x3 conv to in/4 channels, BN, ReLU, dropout 0.1, 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int):
        inter = in_channels // 4
        super().__init__(
            *_conv_bn_relu(in_channels, inter, 3), nn.Dropout(0.1), nn.Conv2d(inter, num_classes, 1)
        )


class DeepLabV3(nn.Module):
    """Backbone -> head on layer4 (+ aux head on layer3); {"out", "aux"} logits at input size."""

    def __init__(
        self, backbone: ResNetEncoder, classifier: nn.Module, aux_classifier: nn.Module | None
    ):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.classifier_names = ("classifier.4",) + (
            ("aux_classifier.4",) if aux_classifier is not None else ()
        )

    @torch.no_grad()
    def reset_classifier(self) -> None:
        """Re-initialise the final 1x1 convolutions as the DeepLabV3 seed does before fine-tuning:
        Xavier-uniform weights, biases 0.01."""
        for name in self.classifier_names:
            conv = self.get_submodule(name)
            nn.init.xavier_uniform_(conv.weight)
            nn.init.constant_(conv.bias, 0.01)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        result = {"out": _resize(self.classifier(features["layer4"]), size)}
        if self.aux_classifier is not None:
            result["aux"] = _resize(self.aux_classifier(features["layer3"]), size)
        return result


def _resize(x: Tensor, size: torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def deeplabv3(
    *,
    num_classes: int,
    in_channels: int = 3,
    backbone: str = "resnet101",
    output_stride: int = 8,
    aux_loss: bool = True,
    aspp_channels: int = 256,
    backbone_weights: Path | str | None = None,
    weights: Path | str | None = None,
) -> DeepLabV3:
    """DeepLabV3 on `backbone` (resnet50/101; resnet18/34 for small experiments).

    `output_stride` 16 (rates 6/12/18, the paper's training setting) or 8 (rates 12/24/36, the
    paper's best evaluation setting and torchvision's). `aux_loss` adds the auxiliary head.
    """
    if output_stride not in ATROUS_RATES:
        raise ValueError(f"output_stride {output_stride} is not supported; expected 8 or 16")
    if num_classes < 1 or aspp_channels < 1:
        raise ValueError(f"num_classes {num_classes} and aspp_channels must be positive")
    encoder = resnet_encoder(
        name=backbone,
        output_stride=output_stride,
        in_channels=in_channels,
        weights=backbone_weights,
    )
    _, _, layer3, layer4 = encoder.channels
    head = DeepLabHead(layer4, num_classes, ATROUS_RATES[output_stride], aspp_channels)
    aux = FCNHead(layer3, num_classes) if aux_loss else None
    model = DeepLabV3(encoder, head, aux)
    if weights is not None:
        load_weights(model, weights)
    return model


def deeplabv3_resnet50(*, num_classes: int, **kwargs) -> DeepLabV3:
    """DeepLabV3-ResNet50; keyword arguments as `deeplabv3`."""
    return deeplabv3(num_classes=num_classes, backbone="resnet50", **kwargs)


def deeplabv3_resnet101(*, num_classes: int, **kwargs) -> DeepLabV3:
    """DeepLabV3-ResNet101 (the DeepLabV3 seed's model); keyword arguments as `deeplabv3`."""
    return deeplabv3(num_classes=num_classes, backbone="resnet101", **kwargs)
