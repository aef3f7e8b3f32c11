"""Sliding-window inference with Gaussian-weighted blending, streamed block by block.

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

Streaming. Tiles run in raster order, ``batch_size`` at a time (cut from the image, normalised
by ``prepare``, logits moved to ``out_device``, the CPU by default, under ``torch.no_grad``).
Every tile's weight map is an outer product of a row and a column profile and the tiles form a
full grid, so the per-pixel weight sum is an outer product of two 1-D sums: no image-sized weight
map. Within a tile row, the pixels left of the next tile's start are final for the rows above the
next tile row as soon as a tile is added: `iter_blocks` hands each such block (about one stride
square) out at once, so the caller can turn it into labels and keep nothing else. Two buffers
hold what is not final yet:

* one tile, ``(K, th, tw)`` float32: the current tile row's sums right of the last block;
* the carry, ``(K, th - sy', W)`` float32 with sy' the smallest row step: the sums of the rows
  the next tile row overlaps. The traversal runs along the longer side of the image (the image
  is walked transposed when it is wider than tall), so W here is the *shorter* side.

The carry is the only part that grows with the image. It cannot be bounded by the tile alone
without running tiles twice: in any order over a 2-D grid, some tiles have a finished neighbour on
one side and an unfinished one on the other, along a whole row or column. Its size is the overlap
fraction of one tile row, e.g. 29 MiB for 8000 x 8000, K = 3, tile 1024 with a 1/8 overlap; the
8000 x 8000 uint8 label map is 61 MiB. So the peak beyond the input image and the labels is one
tile batch through the model plus about two tiles of float32 logits plus the carry.

`iter_strips` (full-width row bands, top to bottom) and `slide_logits` (the full ``(1, K, H, W)``
float32 logits: 4 K bytes per pixel) are built on `iter_blocks` for callers that want them;
`segworks.inference.Predictor` reduces each block to uint8 labels at once.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from segworks.errors import SegworksError
from segworks.inference.tta import Forward

Prepare = Callable[[Tensor], Tensor]
Block = tuple[int, int, int, int, Tensor]  # y0, y1, x0, x1, logits (K, y1 - y0, x1 - x0)
_TRIM_BYTES = 16 * 2**20  # float32 model input from which freed heap memory is returned per batch

__all__ = [
    "gaussian_weights",
    "gaussian_1d",
    "window_starts",
    "resolve_stride",
    "iter_blocks",
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
            raise SegworksError(f"overlap must be in [0, 1), got {overlap}")
        sy, sx = (max(1, int(side * (1 - overlap))) for side in tile)
    for step, side in zip((sy, sx), tile):
        if not 1 <= step <= side:
            raise SegworksError(
                f"stride must be in 1..{side} for a tile side of {side}, got {step}"
            )
    return int(sy), int(sx)


def iter_blocks(
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
) -> Iterator[Block]:
    """Yield ``(y0, y1, x0, x1, logits)``: final blended logits of disjoint blocks that together
    cover the image, ``logits`` float32 ``(K, y1 - y0, x1 - x0)`` on ``out_device``.

    ``image`` is ``(1, C, H, W)`` of any dtype; ``prepare`` turns a stack of tiles cut from it
    into model input (e.g. uint8 -> normalised float on the model's device). ``logits`` views a
    buffer that the next step overwrites: use or copy it before asking for the next block.
    Blocks come in raster order, of rows when the image is at least as tall as wide, else of
    columns (see the module docstring).
    """
    _check_input(image, batch_size)
    height, width = image.shape[-2:]
    transposed = width > height
    if transposed:
        image, tile, stride = image.transpose(-1, -2), tile[::-1], stride[::-1]
    blocks = _raster_blocks(
        forward, image, tile, stride, margin, gaussian, batch_size, prepare, out_device, transposed
    )
    if not transposed:
        yield from blocks
        return
    for x0, x1, y0, y1, logits in blocks:
        yield y0, y1, x0, x1, logits.transpose(-1, -2)


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
    """Yield ``(y0, y1, logits)`` for consecutive full-width row bands, top to bottom; ``logits``
    is a new float32 ``(K, y1 - y0, W)`` tensor. A band is one tile row's stride of rows, so
    this needs ``(K, sy, W)`` more memory than `iter_blocks`."""
    _check_input(image, batch_size)
    width = image.shape[-1]
    band: Tensor | None = None
    blocks = _raster_blocks(
        forward, image, tile, stride, margin, gaussian, batch_size, prepare, out_device
    )
    for y0, y1, x0, x1, logits in blocks:
        if x0 == 0:
            band = torch.empty(logits.shape[0], y1 - y0, width, device=logits.device)
        band[:, :, x0:x1] = logits
        if x1 == width:
            yield y0, y1, band


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
    """The blended ``(1, K, H, W)`` float32 logits of the whole image (see `iter_blocks`)."""
    out: Tensor | None = None
    for y0, y1, x0, x1, logits in iter_blocks(
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
        out[0, :, y0:y1, x0:x1] = logits
    return out


# ------------------------------------------------------------------------------ the streaming core
class _Grid:
    """Tile geometry along both axes, with the 1-D weight profiles and their per-pixel sums."""

    def __init__(self, size, tile, stride, margin: int, gaussian: bool, device) -> None:
        height, width = self.height, self.width = size
        self.tile = (min(tile[0], height), min(tile[1], width))
        step = (min(stride[0], self.tile[0]), min(stride[1], self.tile[1]))
        self.ys = window_starts(height, self.tile[0], step[0])
        self.xs = window_starts(width, self.tile[1], step[1])
        _check_margin(margin, self.tile, step, (len(self.ys), len(self.xs)))
        self.row_weights = _axis_weights(self.ys, self.tile[0], height, margin, gaussian, device)
        self.col_weights = _axis_weights(self.xs, self.tile[1], width, margin, gaussian, device)
        self.row_norm = _axis_sum(self.ys, self.row_weights, height, device)
        self.col_norm = _axis_sum(self.xs, self.col_weights, width, device)
        # rows of a tile row that the next one overlaps; the last row step is the shortest
        self.carry_rows = max(self.tile[0] - self.final_rows(row) for row in range(len(self.ys)))

    def final_rows(self, row: int) -> int:
        """Rows of tile row `row` that no later tile row covers."""
        ys = self.ys
        return (ys[row + 1] if row + 1 < len(ys) else ys[row] + self.tile[0]) - ys[row]

    def weight(self, row: int, col: int) -> Tensor:
        """The ``(th, tw)`` weight map of tile (row, col)."""
        return torch.outer(self.row_weights[row], self.col_weights[col])


def _raster_blocks(
    forward: Forward,
    image: Tensor,
    tile: tuple[int, int],
    stride: tuple[int, int],
    margin: int,
    gaussian: bool,
    batch_size: int,
    prepare: Prepare | None,
    out_device,
    transposed: bool = False,
) -> Iterator[Block]:
    """`iter_blocks` in row-major order. With `transposed`, `image` is a transposed view: tiles
    are transposed back before `prepare` and their logits transposed again after `forward`."""
    grid = _Grid(image.shape[-2:], tile, stride, margin, gaussian, out_device)
    acc = carry = None
    for row, y in enumerate(grid.ys):
        previous_x = 0
        for batch in _chunks(list(enumerate(grid.xs)), batch_size):
            crops = [image[0, :, y : y + grid.tile[0], x : x + grid.tile[1]] for _, x in batch]
            logits = _run_tiles(forward, crops, prepare, transposed)
            logits = logits.to(out_device, torch.float32)
            logits = logits.transpose(-1, -2) if transposed else logits
            if acc is None:
                acc = torch.zeros(logits.shape[1], *grid.tile, device=out_device)
                carry = torch.zeros(logits.shape[1], grid.carry_rows, grid.width, device=out_device)
            for (col, x), tile_logits in zip(batch, logits):
                _shift_left(acc, x - previous_x)
                acc.addcmul_(tile_logits, grid.weight(row, col))
                yield _finish_block(acc, carry, grid, row, col)
                previous_x = x
            del logits, tile_logits  # only the two buffers live on into the next forward pass
        acc.zero_()


def _finish_block(acc: Tensor, carry: Tensor, grid: _Grid, row: int, col: int) -> Block:
    """After tile (row, col) is added, the columns up to the next tile column are done for this
    tile row: add the sums carried from the tile rows above, carry the rows the next tile row
    overlaps, and normalise the rest, which is final, in place."""
    th, y, x = grid.tile[0], grid.ys[row], grid.xs[col]
    end = grid.xs[col + 1] if col + 1 < len(grid.xs) else grid.width
    final = grid.final_rows(row)
    carry_in = th - grid.final_rows(row - 1) if row else 0
    part = acc[:, :, : end - x]
    if carry_in:
        part[:, :carry_in].add_(carry[:, :carry_in, x:end])
    if final < th:
        carry[:, : th - final, x:end] = part[:, final:]
    norm = torch.outer(grid.row_norm[y : y + final], grid.col_norm[x:end])
    return y, y + final, x, end, part[:, :final].div_(norm)


def _run_tiles(
    forward: Forward, crops: list[Tensor], prepare: Prepare | None, transposed: bool
) -> Tensor:
    """The logits of a stack of crops, one forward pass, without autograd. Crops of a
    transposed view are turned the right way round first. Crops of a channels-last image (a
    decoded ``(H, W, C)`` array viewed as ``(C, H, W)``) are stacked channels-last, as whole-image
    inference runs them: PyTorch's CPU convolutions need less memory that way."""
    if transposed:
        crops = [crop.transpose(-1, -2) for crop in crops]
    layout = torch.channels_last if crops[0].stride(0) == 1 else torch.contiguous_format
    first = crops[0]
    shape, dtype = (len(crops), *first.shape), first.dtype
    tiles = torch.empty(shape, dtype=dtype, device=first.device, memory_format=layout)
    for index, crop in enumerate(crops):
        tiles[index].copy_(crop)
    tiles = prepare(tiles) if prepare is not None else tiles
    if tiles.numel() * 4 >= _TRIM_BYTES:
        _release_free_memory()
    with torch.no_grad():
        return forward(tiles)


@functools.cache
def _malloc_trim() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)``, or a no-op where the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def _release_free_memory() -> None:
    """Hand the heap pages freed by the previous tile batch back to the OS. glibc serves blocks
    below its (self-raising, up to 32 MiB) mmap threshold from the heap and keeps them after
    free; over many tile batches that fragmentation adds up to about a tile batch of resident
    memory. The call costs a few milliseconds, so it runs only before large batches."""
    _malloc_trim()()


def _check_input(image: Tensor, batch_size: int) -> None:
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, C, H, W), got {tuple(image.shape)}")
    if batch_size < 1:
        raise SegworksError(f"tile batch size must be >= 1, got {batch_size}")


def _check_margin(
    margin: int, tile: tuple[int, int], stride: tuple[int, int], counts: tuple[int, int]
) -> None:
    if margin < 0:
        raise SegworksError(f"margin must be >= 0, got {margin}")
    for side, step, count in zip(tile, stride, counts):
        if count > 1 and step > side - 2 * margin:
            raise SegworksError(
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


def _shift_left(buffer: Tensor, columns: int) -> None:
    """Move the buffer's columns (dim -1) left by `columns` in place and zero the freed ones at
    the right. Copied in chunks of at most `columns`, so no chunk overlaps its source and no
    temporary is allocated."""
    if columns <= 0:
        return
    width = buffer.shape[-1]
    for start in range(0, width - columns, columns):
        stop = min(start + columns, width - columns)
        buffer[..., start:stop].copy_(buffer[..., start + columns : stop + columns])
    buffer[..., max(width - columns, 0) :].zero_()


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
