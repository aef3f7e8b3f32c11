"""FCN on a dilated ResNet: the "FCN-ResNet" baseline of torchvision and the DeepLab papers.

This is the fully convolutional network of Long, Shelhamer and Darrell (2015) with the VGG
encoder and skip layers replaced by a ResNet that keeps 1/8 of the resolution (the strides of
layer3 and layer4 traded for dilation 2 and 4). A single head on layer4 (3x3 convolution to a
quarter of the channels, BatchNorm, ReLU, dropout 0.1, 1x1 classifier) gives coarse logits that
are upsampled bilinearly to the input size. An auxiliary head of the same form on layer3 adds
deep supervision in training; its loss weight belongs to the loss, not to the model.

The modules carry torchvision's names (`backbone.layerN`, `classifier.0..4`,
`aux_classifier.0..4`), so the state dict of torchvision's `fcn_resnet50/101` loads unchanged and
gives identical outputs. The classic VGG16 FCN-32s/16s/8s live in `segworks.models.fcn`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from segworks.models.backbones import resnet_encoder
from segworks.models.deeplabv3 import DeepLabV3, FCNHead
from segworks.models.weights import load_weights

__all__ = ["FCNResNet", "fcn_resnet", "fcn_resnet50", "fcn_resnet101"]


class FCNResNet(DeepLabV3):
    """Backbone -> FCN head on layer4 (+ aux head on layer3); {"out", "aux"} at input size.

    The wiring is DeepLabV3's (torchvision's models share it too); only the head differs.
    """

    @torch.no_grad()
    def reset_classifier(self) -> None:
        """Re-initialise the final 1x1 convolutions (PyTorch's default initialisation)."""
        for name in self.classifier_names:
            self.get_submodule(name).reset_parameters()


def fcn_resnet(
    *,
    num_classes: int,
    backbone: str = "resnet50",
    in_channels: int = 3,
    aux_loss: bool = True,
    backbone_weights: Path | str | None = None,
    weights: Path | str | None = None,
) -> FCNResNet:
    """FCN on a ResNet at output stride 8; `weights` loads a segworks checkpoint or a
    torchvision `fcn_resnet50/101` state dict, `backbone_weights` an ImageNet ResNet one."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    encoder = resnet_encoder(
        name=backbone, output_stride=8, in_channels=in_channels, weights=backbone_weights
    )
    _, _, layer3, layer4 = encoder.channels
    aux = FCNHead(layer3, num_classes) if aux_loss else None
    model = FCNResNet(encoder, FCNHead(layer4, num_classes), aux)
    if weights is not None:
        load_weights(model, weights)
    return model


def fcn_resnet50(*, num_classes: int, **kwargs) -> FCNResNet:
    """FCN-ResNet50 (torchvision's `fcn_resnet50`); keyword arguments as `fcn_resnet`."""
    return fcn_resnet(num_classes=num_classes, backbone="resnet50", **kwargs)


def fcn_resnet101(*, num_classes: int, **kwargs) -> FCNResNet:
    """FCN-ResNet101 (torchvision's `fcn_resnet101`); keyword arguments as `fcn_resnet`."""
    return fcn_resnet(num_classes=num_classes, backbone="resnet101", **kwargs)
