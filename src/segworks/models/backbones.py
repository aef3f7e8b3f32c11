"""Encoders shared by the classic models: torchvision's ResNets and VGG16, as feature extractors.

Both keep torchvision's module names, so an ImageNet state dict from torchvision
(`resnet101-63fe2227.pth`, `vgg16-397923af.pth`) loads with `backbone_weights=PATH`, and a
segmentation model holding the encoder as `backbone` has torchvision's segmentation keys.

- `ResNetEncoder` returns the four stage outputs {"layer1": 1/4, ..., "layer4": 1/32 or less
  downsampled with dilation}. Output stride 16 or 8 replaces the stride of layer4 (and layer3)
  with dilation, as torchvision's `replace_stride_with_dilation` does for Bottleneck ResNets; the
  BasicBlock ResNets (18/34, which torchvision does not dilate) get the same scheme applied to
  their 3x3 convolutions by `dilate_resnet`.
- `stride_in_1x1=True` moves each stage's stride from the 3x3 to the first 1x1 convolution of
  its first Bottleneck, the original (MSRA Caffe) ResNet that Detectron and the Chainer seeds
  use; torchvision's "v1.5" strides in the 3x3. Same parameters, different function, so weights
  from those tools need it to give their outputs.
- `VGG16Encoder` is VGG16's 13 convolutions with fc6/fc7 as convolutions (7x7 and 1x1, 4096
  channels, as in FCN), returning {"pool3", "pool4", "fc7"}. fc6/fc7 take torchvision's
  classifier weights reshaped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet

from segworks.models.weights import check_state_dict, fill_input_channels, read_state_dict

__all__ = [
    "RESNETS",
    "ResNetEncoder",
    "VGG16Encoder",
    "dilate_resnet",
    "resnet_encoder",
    "stride_in_1x1",
]

RESNETS = {
    "resnet18": tv_resnet.resnet18,
    "resnet34": tv_resnet.resnet34,
    "resnet50": tv_resnet.resnet50,
    "resnet101": tv_resnet.resnet101,
    "resnet152": tv_resnet.resnet152,
}
_DILATED_STAGES = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without its pooling and fc: x -> {"layer1", ..., "layer4"}."""

    def __init__(self, resnet: tv_resnet.ResNet):
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.channels = tuple(_stage_channels(getattr(self, f"layer{i}")) for i in range(1, 5))
        self.pyramid_channels = (self.conv1.out_channels, *self.channels)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            features[name] = x
        return features

    def pyramid(self, x: Tensor) -> list[Tensor]:
        """The stem output (1/2) and the four stage outputs (1/4 ... 1/32), shallow to deep."""
        x = self.relu(self.bn1(self.conv1(x)))
        levels = [x]
        x = self.maxpool(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            levels.append(x)
        return levels

    def first_conv_name(self) -> str:
        return "conv1"


def _stage_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features


def dilate_resnet(resnet: tv_resnet.ResNet, replace_stride_with_dilation: list[bool]) -> None:
    """Trade the stride of layer2..4 for dilation in place, as torchvision builds Bottlenecks.

    In a dilated stage the first block keeps the previous dilation and loses its stride; the
    other blocks use the new dilation. Applied to every 3x3 convolution of a block, this matches
    torchvision's Bottleneck construction and extends it to BasicBlock.
    """
    dilation = 1
    stages = (resnet.layer2, resnet.layer3, resnet.layer4)
    for stage, replace in zip(stages, replace_stride_with_dilation):
        previous = dilation
        if not replace:
            continue
        dilation *= 2
        for index, block in enumerate(stage):
            rate = previous if index == 0 else dilation
            _dilate_block(block, rate)


def _dilate_block(block: nn.Module, rate: int) -> None:
    """Stride 1 and dilation `rate` for a block's 3x3 convolutions; stride 1 for its shortcut."""
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                module.dilation, module.padding = (rate, rate), (rate, rate)


def stride_in_1x1(resnet: tv_resnet.ResNet) -> None:
    """Move the stride of each Bottleneck from its 3x3 to its first 1x1 convolution, in place.

    This is the MSRA/Caffe ResNet of Detectron and chainer-ResNet; BasicBlock ResNets (18/34)
    have no 1x1 convolution and are left as they are.
    """
    for stage in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for block in stage:
            if isinstance(block, tv_resnet.Bottleneck) and block.conv2.stride != (1, 1):
                block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)


def resnet_encoder(
    *,
    name: str = "resnet101",
    output_stride: int = 32,
    in_channels: int = 3,
    weights: Path | str | None = None,
    caffe_stride: bool = False,
) -> ResNetEncoder:
    """A ResNet encoder by torchvision name, optionally with an ImageNet state dict file.

    `caffe_stride=True` strides in the first 1x1 convolution (`stride_in_1x1`)."""
    if name not in RESNETS:
        raise ValueError(f"backbone {name!r} is not supported; expected one of {sorted(RESNETS)}")
    if output_stride not in _DILATED_STAGES:
        raise ValueError(f"output_stride {output_stride} is not supported; expected 8, 16 or 32")
    replace = _DILATED_STAGES[output_stride]
    bottleneck = name not in ("resnet18", "resnet34")
    resnet = RESNETS[name](
        weights=None, replace_stride_with_dilation=replace if bottleneck else None
    )
    if not bottleneck:
        dilate_resnet(resnet, replace)
    if caffe_stride:
        stride_in_1x1(resnet)
    if weights is not None:
        _load_imagenet(resnet, weights, drop=("fc.",))
    if in_channels != 3:
        _replace_first_conv(resnet, in_channels)
    return ResNetEncoder(resnet)


def _load_imagenet(module: nn.Module, path: Path | str, *, drop: tuple[str, ...]) -> None:
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(drop)}
    check_state_dict(module, state, path, skip_prefixes=drop)
    module.load_state_dict(state, strict=False)


@torch.no_grad()
def _replace_first_conv(resnet: tv_resnet.ResNet, in_channels: int) -> None:
    old = resnet.conv1
    resnet.conv1 = nn.Conv2d(in_channels, old.out_channels, 7, stride=2, padding=3, bias=False)
    resnet.conv1.weight.copy_(fill_input_channels(old.weight, in_channels))


# VGG16 configuration "D": channels per convolution, "M" for a 2x2 max pooling.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
_POOL3, _POOL4 = 16, 23  # indices of pool3 and pool4 in torchvision's vgg16().features


class MatmulConv2d(nn.Conv2d):
    """A Conv2d that trains on the CPU as unfold + matrix product.

    FCN's fc6 (7x7, 512 -> 4096 channels) sees maps of a few pixels; there, oneDNN's
    convolution backward on the CPU was measured ~50x slower than its forward (35 s against
    0.6 s for one 176 px image, torch 2.14), while the same product as a matrix multiply
    trains at matmul speed. Evaluation (and every non-CPU device) uses the plain convolution,
    so large inference inputs never build the unfolded matrix. Same parameters, same result
    up to float rounding.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and x.is_cpu) or self.groups != 1 or self.padding_mode != "zeros":
            return self._conv_forward(x, self.weight, self.bias)
        batch, _, height, width = x.shape
        kernel, pad, stride, dilation = self.kernel_size, self.padding, self.stride, self.dilation
        cols = nn.functional.unfold(x, kernel, dilation=dilation, padding=pad, stride=stride)
        out = self.weight.flatten(1) @ cols
        if self.bias is not None:
            out = out + self.bias[:, None]
        out_h = (height + 2 * pad[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
        out_w = (width + 2 * pad[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
        return out.view(batch, self.out_channels, out_h, out_w)


class VGG16Encoder(nn.Module):
    """VGG16 convolutions + fc6 (7x7) and fc7 (1x1) as convolutions: x -> pool3, pool4, fc7.

    `pad100` gives the FCN paper's geometry: conv1_1 padded by 100, Caffe's ceil-mode pooling and
    an unpadded fc6. Otherwise conv1_1 and fc6 are "same"-padded, and inputs whose sides are
    multiples of 32 give maps of exactly 1/8, 1/16 and 1/32 of the input. `width` scales the
    convolution widths (64 = VGG16) and `fc_channels` the fc6/fc7 width (4096 = VGG16); only the
    original widths load torchvision's weights.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        pad100: bool = False,
        width: int = 64,
        fc_channels: int = 4096,
    ):
        super().__init__()
        self.features = _vgg16_features(in_channels, width, pad100)
        top = self.features[-3].out_channels
        self.fc6 = MatmulConv2d(top, fc_channels, 7, padding=0 if pad100 else 3)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(0.5)
        self.channels = (self.features[_POOL3 - 2].out_channels, top, fc_channels)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """torchvision's VGG initialisation: He for convolutions, N(0, 0.01) for fc6/fc7."""
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        for module in (self.fc6, self.fc7):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        pool3 = self.features[: _POOL3 + 1](x)
        pool4 = self.features[_POOL3 + 1 : _POOL4 + 1](pool3)
        x = self.features[_POOL4 + 1 :](pool4)
        x = self.drop6(self.relu6(self.fc6(x)))
        x = self.drop7(self.relu7(self.fc7(x)))
        return {"pool3": pool3, "pool4": pool4, "fc7": x}

    def load_imagenet(self, path: Path | str) -> None:
        """Load a torchvision vgg16 state dict file; its first two Linear layers become fc6/fc7."""
        state = self.from_torchvision(read_state_dict(path))
        check_state_dict(self, state, path)
        self.load_state_dict(state, strict=False)

    def from_torchvision(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """torchvision vgg16 keys -> ours: features.* as they are, classifier.0/3 -> fc6/fc7
        reshaped to (out, in, 7, 7) and (out, in, 1, 1); classifier.6 (ImageNet scores) dropped.
        """
        renamed = {k: v for k, v in state.items() if k.startswith("features.")}
        for source, target in (("classifier.0", "fc6"), ("classifier.3", "fc7")):
            if f"{source}.bias" in state:
                renamed[f"{target}.bias"] = state[f"{source}.bias"]
            weight = state.get(f"{source}.weight")
            shape = getattr(self, target).weight.shape
            if weight is not None:  # a size mismatch is reported by check_state_dict
                renamed[f"{target}.weight"] = (
                    weight.reshape(shape) if weight.numel() == shape.numel() else weight
                )
        return renamed


def _vgg16_features(in_channels: int, width: int, pad100: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=pad100))
            continue
        out = item * width // 64
        padding = 100 if pad100 and not layers else 1
        layers += [nn.Conv2d(channels, out, 3, padding=padding), nn.ReLU(inplace=True)]
        channels = out
    return nn.Sequential(*layers)


def vgg16_encoder(
    *,
    in_channels: int = 3,
    pad100: bool = False,
    width: int = 64,
    fc_channels: int = 4096,
    weights: Path | str | None = None,
) -> VGG16Encoder:
    """A VGG16 encoder, optionally with torchvision's ImageNet weights (`vgg16-397923af.pth`)."""
    if width < 1 or fc_channels < 1:
        raise ValueError(f"width {width} and fc_channels {fc_channels} must be positive")
    encoder = VGG16Encoder(in_channels=3, pad100=pad100, width=width, fc_channels=fc_channels)
    if weights is not None:
        encoder.load_imagenet(weights)
    if in_channels != 3:
        _replace_vgg_first_conv(encoder, in_channels)
    return encoder


@torch.no_grad()
def _replace_vgg_first_conv(encoder: VGG16Encoder, in_channels: int) -> None:
    old = encoder.features[0]
    new = nn.Conv2d(in_channels, old.out_channels, 3, padding=old.padding)
    new.weight.copy_(fill_input_channels(old.weight, in_channels))
    new.bias.copy_(old.bias)
    encoder.features[0] = new
