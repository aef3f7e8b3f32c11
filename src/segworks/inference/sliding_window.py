"""Sliding-window inference with Gaussian-weighted blending, in horizontal strips.

The image is covered by tiles of ``tile = (th, tw)`` pixels whose top-left corners step by
``stride``; the last tile of a row or column is moved back to end at the image's edge, and a tile
larger than the image shrinks to it. Each tile's logits are multiplied by a weight map and summed;
every output pixel is the weighted mean of the tiles that cover it.

Weights. With ``gaussian=True`` the weight map is a centred Gaussian with sigma = 1/8 of the tile
side (the nnU-Net choice), scaled to a maximum of 1: pixels near a tile's centre, which saw the
most context, dominate, and seams fade out. With ``gaussian=False`` every covering tile counts the
same. ``margin`` pixels along each tile edge that lies *inside* the image get weight 0: with a
margin of at least the model's receptive-field radius, every contribution is computed with full
context, and tiled inference equals whole-image inference (up to float rounding). This needs the
tiles to overlap by ``2 * margin`` pixels; a larger margin raises ValueError.

Memory. Tiles are cut, normalised (``prepare``) and run ``batch_size`` at a time; logits are
accumulated on ``out_device`` (the CPU by default) into one buffer of a tile row, ``(K, th, W)``
float32. Every tile's weight map is an outer product of a row and a column profile and the tiles
form a full grid, so the per-pixel weight sum is an outer product of two 1-D sums: there is no
image-sized weight map. Rows are final once the next tile row starts below them; `iter_strips`
normalises and hands them out 64 rows at a time and reuses the buffer. Peak memory is one tile
batch through the model plus the ``4 K th W``-byte row buffer, independent of the image height.
What does grow with the image is the input (keep it uint8, 3 bytes per pixel, and normalise per
tile with ``prepare``) and whatever the caller keeps of the output: `slide_logits` returns the full
``(1, K, H, W)`` float32 logits (4 K bytes per pixel, 732 MiB for 8000 x 8000 with K = 3), while
`segworks.inference.Predictor` reduces each band to uint8 labels at once (1 byte per pixel; a
binary model's float32 probabilities add 4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from segworks.inference.tta import Forward

Prepare = Callable[[Tensor], Tensor]
_EMIT_ROWS = 64  # finished rows are normalised and handed out this many at a time

__all__ = [
    "gaussian_weights",
    "gaussian_1d",
    "window_starts",
    "resolve_stride",
    "iter_strips",
    "slide_logits",
]


def gaussian_weights(tile: tuple[int, int], *, sigma_scale: float = 1 / 8) -> Tensor:
    """A ``(th, tw)`` Gaussian importance map centred on the tile, sigma = sigma_scale * side,
    maximum 1. It is the outer product of two `gaussian_1d` profiles; with sigma = side / 8 its
    smallest value (at the corners) is about exp(-8) per axis, never 0."""
    return torch.outer(gaussian_1d(tile[0], sigma_scale), gaussian_1d(tile[1], sigma_scale))


def gaussian_1d(side: int, sigma_scale: float = 1 / 8) -> Tensor:
    """The Gaussian profile along one tile side (float32, maximum 1, no zeros)."""
    sigma = max(side * sigma_scale, 1e-3)
    offset = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
    profile = torch.exp(-0.5 * (offset / sigma) ** 2)
    profile /= profile.max()
    positive = profile[profile > 0]
    return profile.clamp_min(float(positive.min())).to(torch.float32)


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``; the last one ends at ``length``."""
    if tile >= length:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def resolve_stride(
    tile: tuple[int, int], *, overlap: float | None = 0.5, stride: Sequence[int] | int | None = None
) -> tuple[int, int]:
    """The (sy, sx) step between tiles: `stride` when given, else ``tile * (1 - overlap)``."""
    if stride is not None:
        sy, sx = (stride, stride) if isinstance(stride, int) else tuple(stride)
    else:
        if overlap is None or not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        sy, sx = (max(1, int(side * (1 - overlap))) for side in tile)
    for step, side in zip((sy, sx), tile):
        if not 1 <= step <= side:
            raise ValueError(f"stride must be in 1..{side} for a tile side of {side}, got {step}")
    return int(sy), int(sx)


def iter_strips(
    forward: Forward,
    image: Tensor,
    *,
    tile: tuple[int, int],
    stride: tuple[int, int],
    margin: int = 0,
    gaussian: bool = True,
    batch_size: int = 4,
    prepare: Prepare | None = None,
    out_device: torch.device | str = "cpu",
) -> Iterator[tuple[int, int, Tensor]]:
    """Yield ``(y0, y1, logits)`` for consecutive row bands of the output, top to bottom.

    ``image`` is ``(1, C, H, W)`` of any dtype; ``prepare`` turns a stack of tiles cut from it
    into model input (e.g. uint8 -> normalised float on the model's device). ``logits`` is a
    float32 ``(K, y1 - y0, W)`` tensor on ``out_device`` holding final blended logits.
    """
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, C, H, W), got {tuple(image.shape)}")
    if batch_size < 1:
        raise ValueError(f"tile batch size must be >= 1, got {batch_size}")
    height, width = image.shape[-2:]
    th, tw = min(tile[0], height), min(tile[1], width)
    sy, sx = min(stride[0], th), min(stride[1], tw)
    ys, xs = window_starts(height, th, sy), window_starts(width, tw, sx)
    _check_margin(margin, (th, tw), (sy, sx), (len(ys), len(xs)))
    # The tiles form a full grid and every weight map is an outer product (row profile x column
    # profile), so the per-pixel weight sum is the outer product of two 1-D sums: no (H, W) map.
    row_weights = _axis_weights(ys, th, height, margin, gaussian, out_device)
    col_weights = _axis_weights(xs, tw, width, margin, gaussian, out_device)
    row_norm = _axis_sum(ys, row_weights, height, out_device)
    col_norm = _axis_sum(xs, col_weights, width, out_device)
    strip: Tensor | None = None
    for row, y in enumerate(ys):
        for batch in _chunks(list(enumerate(xs)), batch_size):
            tiles = torch.cat([image[..., y : y + th, x : x + tw] for _, x in batch])
            tiles = prepare(tiles) if prepare is not None else tiles
            logits = forward(tiles).to(out_device, torch.float32)
            if strip is None:
                strip = torch.zeros(logits.shape[1], th, width, device=out_device)
            for (col, x), tile_logits in zip(batch, logits):
                weight = torch.outer(row_weights[row], col_weights[col])
                strip[:, :, x : x + tw].addcmul_(tile_logits, weight)
        done = (ys[row + 1] if row + 1 < len(ys) else y + th) - y
        for start in range(0, done, _EMIT_ROWS):
            stop = min(start + _EMIT_ROWS, done)
            norm = torch.outer(row_norm[y + start : y + stop], col_norm)
            yield y + start, y + stop, strip[:, start:stop] / norm
        _shift_up(strip, done)


def slide_logits(
    forward: Forward,
    image: Tensor,
    *,
    tile: tuple[int, int],
    stride: tuple[int, int],
    margin: int = 0,
    gaussian: bool = True,
    batch_size: int = 4,
    prepare: Prepare | None = None,
    out_device: torch.device | str = "cpu",
) -> Tensor:
    """The blended ``(1, K, H, W)`` float32 logits of the whole image (see `iter_strips`)."""
    out: Tensor | None = None
    for y0, y1, logits in iter_strips(
        forward,
        image,
        tile=tile,
        stride=stride,
        margin=margin,
        gaussian=gaussian,
        batch_size=batch_size,
        prepare=prepare,
        out_device=out_device,
    ):
        if out is None:
            out = torch.empty(1, logits.shape[0], *image.shape[-2:], device=out_device)
        out[0, :, y0:y1] = logits
    return out


def _check_margin(
    margin: int, tile: tuple[int, int], stride: tuple[int, int], counts: tuple[int, int]
) -> None:
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    for side, step, count in zip(tile, stride, counts):
        if count > 1 and step > side - 2 * margin:
            raise ValueError(
                f"a margin of {margin} px needs tiles overlapping by >= {2 * margin} px, but a "
                f"tile side of {side} with stride {step} overlaps by {side - step} px "
                "(lower the margin or raise the overlap)"
            )


def _axis_weights(
    starts: list[int], side: int, length: int, margin: int, gaussian: bool, device
) -> list[Tensor]:
    """The 1-D weight profile of each tile position along one axis: Gaussian or flat, with
    `margin` zeros at each end that lies inside the image."""
    base = gaussian_1d(side) if gaussian else torch.ones(side)
    profiles = []
    for start in starts:
        profile = base.clone()
        if margin:
            if start > 0:
                profile[:margin] = 0
            if start + side < length:
                profile[side - margin :] = 0
        profiles.append(profile.to(device))
    return profiles


def _axis_sum(starts: list[int], profiles: list[Tensor], length: int, device) -> Tensor:
    total = torch.zeros(length, device=device)
    for start, profile in zip(starts, profiles):
        total[start : start + len(profile)] += profile
    return total


def _shift_up(buffer: Tensor, rows: int) -> None:
    """Move the buffer's rows up by `rows` along dim -2 and zero the freed rows at the bottom."""
    height = buffer.shape[-2]
    if rows < height:
        buffer[..., : height - rows, :] = buffer[..., rows:, :].clone()
    buffer[..., max(height - rows, 0) :, :] = 0


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
