"""U-Net (Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015) and the padded "UNet-like" network of the seed tutorial.

`unet_original` follows the paper: unpadded ("valid") 3x3 convolutions, each followed by a ReLU,
2x2 max-pooling, 2x2 up-convolutions that halve the channels, and skip connections that
centre-crop the encoder map to the decoder map before concatenation. A 572x572 tile gives a
388x388 output (`unet_original_output_size(572) == 388`). To honour the segworks contract
(logits at input resolution, any input size), the module mirrors the input by reflection to the
smallest valid tile whose output covers the input (the paper's overlap-tile strategy), runs the
valid network and crops the output back to the input size. `UNetOriginal.forward_valid` is the
raw network without that padding.

`unet` is the common padded variant: "same" 3x3 convolutions (optionally with BatchNorm), so the
decoder maps align with the encoder maps and no cropping is needed; the input is padded to a
multiple of 2**depth and the output cropped back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad the bottom and right edges by replication so that H and W divide by `multiple`.

    While tracing (export) the pad is always applied, zero or not: the pad widths are traced
    from the input size, where skipping a zero pad would bake the example size into the graph.
    """
    pad_h, pad_w = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if not torch.jit.is_tracing() and pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def mirror_pad(x: Tensor, left: int, right: int, top: int, bottom: int) -> Tensor:
    """Reflection padding of any width: reflects repeatedly when a pad exceeds the image side
    (a single reflection cannot pad more than side - 1 pixels); one-pixel sides replicate."""
    pads = [left, right, top, bottom]
    while any(pads):
        h, w = x.shape[-2:]
        if h == 1 or w == 1:
            return F.pad(x, tuple(pads), mode="replicate")
        step = [min(p, side - 1) for p, side in zip(pads, (w, w, h, h))]
        x = F.pad(x, tuple(step), mode="reflect")
        pads = [p - s for p, s in zip(pads, step)]
    return x


def center_crop(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    top = (x.shape[-2] - size[0]) // 2
    left = (x.shape[-1] - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


# ---------------------------------------------------------------------------------------------
# The paper's network: valid convolutions
# ---------------------------------------------------------------------------------------------


def unet_original_output_size(size: int, depth: int = 4) -> int:
    """Output side of the valid-convolution U-Net for an input side `size`.

    Raises ValueError when the size is not a valid tile: every 2x2 max-pooling must see an even
    side, and no map may vanish. unet_original_output_size(572) == 388.
    """
    side = size
    for _ in range(depth):
        side -= 4
        if side < 2 or side % 2:
            raise ValueError(
                f"input side {size} is not a valid U-Net tile for depth {depth}: a 2x2 "
                f"max-pooling would see side {side}; see unet_original_input_size()"
            )
        side //= 2
    side -= 4
    for _ in range(depth):
        if side < 1:
            break
        side = 2 * side - 4
    if side < 1:
        raise ValueError(f"input side {size} is too small for a depth-{depth} U-Net")
    return side


def unet_original_input_size(min_output: int, depth: int = 4) -> int:
    """Smallest valid input side whose output side is at least `min_output`."""
    bottom = 1
    while True:
        side_in, side_out = bottom + 4, bottom
        for _ in range(depth):
            side_in, side_out = 2 * side_in + 4, 2 * side_out - 4
            if side_out < 1:
                break
        if side_out >= min_output:
            return side_in
        bottom += 1


class ValidDoubleConv(nn.Sequential):
    """Two unpadded 3x3 convolutions, each followed by a ReLU: the side shrinks by 4."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3),
            nn.ReLU(inplace=True),
        )


class UNetOriginal(nn.Module):
    """The paper's U-Net; `widths` are the channels per level, top to bottom (64 ... 1024)."""

    # segworks.export refuses a size-agnostic trace of this model and says why
    fixed_size_trace = "its mirror padding and tile size are computed in Python from the input size"

    def __init__(self, in_channels: int, num_classes: int, widths: list[int], dropout: float = 0.0):
        super().__init__()
        self.depth = len(widths) - 1
        inputs = [in_channels, *widths[:-2]]
        self.down = nn.ModuleList(ValidDoubleConv(c_in, c) for c_in, c in zip(inputs, widths))
        self.bottom = ValidDoubleConv(widths[-2], widths[-1])
        # the paper places dropout at the end of the contracting path
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        pairs = list(zip(widths[:0:-1], widths[-2::-1]))  # (1024, 512), (512, 256), ...
        self.ups = nn.ModuleList(nn.ConvTranspose2d(c, c // 2, 2, stride=2) for c, _ in pairs)
        self.up_blocks = nn.ModuleList(ValidDoubleConv(2 * skip, skip) for _, skip in pairs)
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        for module in self.modules():  # the paper's init: Gaussian, std sqrt(2 / fan-in)
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward_valid(self, x: Tensor) -> Tensor:
        """The raw network: an (H, W) valid tile gives logits of unet_original_output_size."""
        for side in x.shape[-2:]:
            unet_original_output_size(side, self.depth)  # raises on an invalid tile
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.dropout(self.bottom(x))
        for up, block, skip in zip(self.ups, self.up_blocks, reversed(skips)):
            x = up(x)
            x = block(torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1))
        return self.head(x)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Mirror-pad to the smallest covering tile, run the valid network, crop to (H, W)."""
        h, w = x.shape[-2:]
        tile_h = unet_original_input_size(h, self.depth)
        tile_w = unet_original_input_size(w, self.depth)
        margin = (tile_h - unet_original_output_size(tile_h, self.depth)) // 2
        x = mirror_pad(x, margin, tile_w - w - margin, margin, tile_h - h - margin)
        return {"out": self.forward_valid(x)[..., :h, :w]}


def unet_original(
    *,
    num_classes: int,
    in_channels: int = 3,
    base_width: int = 64,
    depth: int = 4,
    dropout: float = 0.0,
) -> UNetOriginal:
    """U-Net as in Ronneberger et al. 2015: valid convolutions, centre-cropped skips.

    base_width=64, depth=4 is the paper's network (31.0 M parameters with in_channels=1 and
    num_classes=2). The paper uses dropout at the end of the contracting path; pass dropout=0.5
    for that. Any input size works: the input is mirror-padded to a valid tile and the output
    cropped back, so the cost is that of the larger tile (572x572 for a 388x388 input).
    """
    check_positive(num_classes=num_classes, in_channels=in_channels, base_width=base_width)
    check_positive(depth=depth)
    widths = [base_width * 2**level for level in range(depth + 1)]
    return UNetOriginal(in_channels, num_classes, widths, dropout)


# ---------------------------------------------------------------------------------------------
# The padded "UNet-like" network
# ---------------------------------------------------------------------------------------------


class DoubleConv(nn.Sequential):
    """Two padded 3x3 convolutions, each followed by an optional norm layer and a ReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: NormLayer | None):
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(c_in, out_channels, 3, padding=1, bias=norm_layer is None))
            if norm_layer is not None:
                layers.append(norm_layer(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNet(nn.Module):
    """Padded U-Net; `widths` are the channels per level, top to bottom."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: list[int],
        norm_layer: NormLayer | None = nn.BatchNorm2d,
    ):
        super().__init__()
        self.stride = 2 ** (len(widths) - 1)
        inputs = [in_channels, *widths[:-2]]
        self.down = nn.ModuleList(
            DoubleConv(c_in, c, norm_layer) for c_in, c in zip(inputs, widths)
        )
        self.bottom = DoubleConv(widths[-2], widths[-1], norm_layer)
        pairs = list(zip(widths[:0:-1], widths[-2::-1]))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(c, skip, 2, stride=2) for c, skip in pairs)
        self.up_blocks = nn.ModuleList(DoubleConv(2 * skip, skip, norm_layer) for _, skip in pairs)
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.stride)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, block, skip in zip(self.ups, self.up_blocks, reversed(skips)):
            x = block(torch.cat([skip, up(x)], dim=1))
        return {"out": self.head(x)[..., :h, :w]}


def unet(
    *,
    num_classes: int,
    in_channels: int = 3,
    base_width: int = 64,
    depth: int = 4,
    batch_norm: bool = True,
) -> UNet:
    """Padded "UNet-like" U-Net with width/depth knobs and optional BatchNorm.

    Channels are base_width * 2**level for level 0..depth; the output stride is 2**depth and the
    input is padded to a multiple of it internally, so any input size works.
    """
    check_positive(num_classes=num_classes, in_channels=in_channels, base_width=base_width)
    check_positive(depth=depth)
    widths = [base_width * 2**level for level in range(depth + 1)]
    return UNet(in_channels, num_classes, widths, nn.BatchNorm2d if batch_norm else None)


def check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
