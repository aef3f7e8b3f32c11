"""The step-by-step networks of the seed tutorial (DeepLearningMugenKnock, "Q. SemanticSegmentation").

Every block is the tutorial's "Convolution(3x3, 32, padding 1) + ReLU + BatchNormalization" (ReLU
before BN, as the tutorial chose), followed by a 1x1 convolution to the class logits. The
tutorial applies sigmoid (binary) or softmax itself; here the models return logits and the loss
applies the activation (segworks' output contract).

- `tutorial_convnet`: six blocks at full resolution (the binarisation net).
- `tutorial_upsample`: two blocks, 2x2 max-pooling, two blocks, 2x nearest (or bilinear)
  upsampling, two blocks.
- `tutorial_transposed`: as above with the upsampling replaced by a 2x2 stride-2 transposed
  convolution + ReLU + BN.
- `tutorial_concat`: the transposed net whose upsampled map is concatenated with the map before
  pooling, then fused by a 1x1 convolution + ReLU + BN back to 32 channels.

The pooled nets pad odd inputs by replication to an even size and crop the logits back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segworks.models.unet import check_positive, pad_to_multiple

UPSAMPLE_MODES = ("nearest", "bilinear")


class ConvReLUBN(nn.Sequential):
    """Convolution + ReLU + BatchNorm, the tutorial's basic block."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(out_channels),
        )


def conv_blocks(in_channels: int, width: int, count: int) -> nn.Sequential:
    channels = [in_channels] + [width] * count
    return nn.Sequential(*(ConvReLUBN(a, b) for a, b in zip(channels, channels[1:])))


class TutorialConvNet(nn.Module):
    """A body at full resolution followed by a 1x1 classifier."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.head(self.body(x))}


class TutorialPoolNet(nn.Module):
    """stem -> 2x2 max-pool -> bottom -> up (x2) [-> concat stem, fuse] -> tail -> head."""

    def __init__(
        self,
        stem: nn.Module,
        bottom: nn.Module,
        up: nn.Module,
        tail: nn.Module,
        head: nn.Module,
        fuse: nn.Module | None = None,
    ):
        super().__init__()
        self.stem = stem
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bottom = bottom
        self.up = up
        self.fuse = fuse
        self.tail = tail
        self.head = head

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2:]
        skip = self.stem(pad_to_multiple(x, 2))
        x = self.up(self.bottom(self.pool(skip)))
        if self.fuse is not None:
            x = self.fuse(torch.cat([x, skip], dim=1))
        return {"out": self.head(self.tail(x))[..., :h, :w]}


def tutorial_convnet(
    *, num_classes: int, in_channels: int = 3, width: int = 32, num_convs: int = 6
) -> TutorialConvNet:
    """The tutorial's first net: six 3x3 Conv+ReLU+BN blocks and a 1x1 classifier (stride 1).

    Its receptive field is 2 * num_convs + 1 pixels (13 by default); the tutorial trains it as a
    binary (sigmoid) net with num_classes=1.
    """
    check_positive(num_classes=num_classes, in_channels=in_channels, width=width)
    check_positive(num_convs=num_convs)
    return TutorialConvNet(
        conv_blocks(in_channels, width, num_convs), nn.Conv2d(width, num_classes, 1)
    )


def tutorial_upsample(
    *, num_classes: int, in_channels: int = 3, width: int = 32, mode: str = "nearest"
) -> TutorialPoolNet:
    """The tutorial's upsampling net: 2 blocks, max-pool, 2 blocks, 2x interpolation, 2 blocks.

    mode is "nearest" (the section's title) or "bilinear" (its layer list).
    """
    check_positive(num_classes=num_classes, in_channels=in_channels, width=width)
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    align = False if mode == "bilinear" else None
    up = nn.Upsample(scale_factor=2, mode=mode, align_corners=align)
    return _pool_net(in_channels, num_classes, width, up)


def tutorial_transposed(
    *, num_classes: int, in_channels: int = 3, width: int = 32
) -> TutorialPoolNet:
    """The tutorial's transposed-convolution net: upsampling by a 2x2 stride-2 ConvTranspose."""
    check_positive(num_classes=num_classes, in_channels=in_channels, width=width)
    return _pool_net(in_channels, num_classes, width, _transposed_up(width))


def tutorial_concat(*, num_classes: int, in_channels: int = 3, width: int = 32) -> TutorialPoolNet:
    """The tutorial's concat-skip net: the upsampled map joins the pre-pooling map, 1x1 fuse."""
    check_positive(num_classes=num_classes, in_channels=in_channels, width=width)
    fuse = ConvReLUBN(2 * width, width, kernel_size=1)
    return _pool_net(in_channels, num_classes, width, _transposed_up(width), fuse)


def _transposed_up(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(width, width, 2, stride=2), nn.ReLU(inplace=True), nn.BatchNorm2d(width)
    )


def _pool_net(
    in_channels: int, num_classes: int, width: int, up: nn.Module, fuse: nn.Module | None = None
) -> TutorialPoolNet:
    return TutorialPoolNet(
        stem=conv_blocks(in_channels, width, 2),
        bottom=conv_blocks(width, width, 2),
        up=up,
        tail=conv_blocks(width, width, 2),
        head=nn.Conv2d(width, num_classes, 1),
        fuse=fuse,
    )
