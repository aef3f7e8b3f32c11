"""Pictures of labels and results, with PIL and numpy only.

Label maps are integer ``(H, W)`` arrays of class indices with ``ignore_index`` (255) for void;
palettes are lists of ``(r, g, b)`` tuples, one per class (``DatasetMeta.palette``). Every
function returns a PIL image; saving is the caller's job (`segworks.fileio.save_image`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segworks import IGNORE_INDEX

__all__ = [
    "colorize",
    "confusion_matrix_image",
    "error_map",
    "index_image",
    "overlay",
    "panel",
    "probability_image",
]

Colour = tuple[int, int, int]
VOID_COLOUR: Colour = (224, 224, 192)  # Pascal VOC's colour for its void/border label
ERROR_COLOUR: Colour = (255, 0, 0)
IGNORE_GREY: Colour = (128, 128, 128)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's built-in font at `size` px; the fixed bitmap font on Pillow without size support."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _labels(label, name: str = "label") -> np.ndarray:
    array = np.asarray(label)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{name} must be a (H, W) array of class indices, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _palette_table(label: np.ndarray, palette: Sequence[Sequence[int]], ignore_index: int):
    """The palette as a (P, 3) uint8 array, after checking every non-ignored label has a colour."""
    colours = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    if colours.size and (colours.min() < 0 or colours.max() > 255):
        raise ValueError("palette colours must be (r, g, b) with values in 0..255")
    counted = label[label != ignore_index]
    if counted.size and (counted.min() < 0 or counted.max() >= len(colours)):
        bad = int(counted.min()) if counted.min() < 0 else int(counted.max())
        raise ValueError(
            f"label value {bad} has no colour: the palette has {len(colours)} entries "
            f"(0..{len(colours) - 1}) and the ignore index is {ignore_index}"
        )
    return colours.astype(np.uint8)


def colorize(
    label,
    palette: Sequence[Sequence[int]],
    *,
    ignore_color: Colour = (0, 0, 0),
    ignore_index: int = IGNORE_INDEX,
) -> Image.Image:
    """RGB image of a label map: class c in ``palette[c]``, ignored pixels in `ignore_color`."""
    array = _labels(label)
    table = _palette_table(array, palette, ignore_index)
    ignored = array == ignore_index
    rgb = (
        table[np.where(ignored, 0, array)] if len(table) else np.zeros((*array.shape, 3), np.uint8)
    )
    rgb[ignored] = ignore_color
    return Image.fromarray(rgb)


def index_image(
    label,
    palette: Sequence[Sequence[int]],
    *,
    ignore_color: Colour = VOID_COLOUR,
    ignore_index: int = IGNORE_INDEX,
) -> Image.Image:
    """'P'-mode image whose pixel values are the labels and whose palette is the classes' colours.

    Saved as PNG, it reads back (``np.array(Image.open(path))``) as the label map itself, and
    viewers show the colours. Palette entry `ignore_index` (255) shows `ignore_color`.
    """
    array = _labels(label)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(
            f"an index image holds labels 0..255, got {int(array.min())}..{int(array.max())}"
        )
    if len(palette) > 256:
        raise ValueError(f"an index image has at most 256 colours, palette has {len(palette)}")
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if 0 <= ignore_index < 256:
        lut[ignore_index] = ignore_color
    image = Image.fromarray(array.astype(np.uint8))  # "L"; putpalette turns it into "P"
    image.putpalette(lut.flatten().tolist())
    return image


def overlay(
    image: Image.Image,
    label,
    palette: Sequence[Sequence[int]],
    *,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    legend: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> Image.Image:
    """Class colours (opacity `alpha`) blended over a grey version of the photo, so a class keeps
    the hue of its legend swatch (red over a cyan sky would blend to grey), and every class
    boundary drawn in the legend colour itself. Ignored pixels show the photo unchanged;
    `alpha` 0 turns the overlay off (the photo itself).

    With ``legend=True`` a white panel is added to the right of the blended photo listing the
    classes present in `label` (colour swatch + name), so the photo area itself is untouched
    and keeps its size at the left; with no labelled pixel there is no panel.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    array = _labels(label)
    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    if photo.shape[:2] != array.shape:
        raise ValueError(
            f"label shape {array.shape} does not match the image size "
            f"{photo.shape[1]}x{photo.shape[0]} (W x H)"
        )
    colours = np.asarray(colorize(array, palette, ignore_index=ignore_index), dtype=np.float32)
    labelled = array != ignore_index
    grey = (photo @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    blended = np.where(labelled[..., None], (1 - alpha) * grey + alpha * colours, photo)
    edges = class_boundaries(array) & labelled
    blended[edges] = colours[edges]
    if alpha == 0:
        blended = photo  # no overlay
    result = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
    present = [int(c) for c in np.unique(array) if c != ignore_index]
    if not legend or not present:
        return result
    names = [class_names[c] if class_names else str(c) for c in present]
    return _with_legend(result, [(names[i], tuple(palette[c])) for i, c in enumerate(present)])


def class_boundaries(label: np.ndarray) -> np.ndarray:
    """Bool (H, W): pixels with a 4-neighbour of another class (both sides of each boundary)."""
    edges = np.zeros(label.shape, dtype=bool)
    across = label[:, 1:] != label[:, :-1]
    down = label[1:, :] != label[:-1, :]
    edges[:, 1:] |= across
    edges[:, :-1] |= across
    edges[1:, :] |= down
    edges[:-1, :] |= down
    return edges


def _with_legend(image: Image.Image, entries: list[tuple[str, Colour]]) -> Image.Image:
    """`image` with a legend panel (swatch + name per entry) appended on its right."""
    size = int(np.clip(image.height / 24, 10, 28))
    font = _font(size)
    probe = ImageDraw.Draw(image)
    text_width = max(_text_size(probe, name, font)[0] for name, _ in entries)
    pad, row = max(size // 2, 4), size + max(size // 2, 4)
    width = pad + size + pad + text_width + pad
    height = max(image.height, pad + row * len(entries))
    canvas = Image.new("RGB", (image.width + width, height), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = image.width + pad
    for index, (name, colour) in enumerate(entries):
        y = pad + index * row
        draw.rectangle([x, y, x + size - 1, y + size - 1], fill=tuple(colour), outline=(0, 0, 0))
        draw.text((x + size + pad, y), name, fill=(0, 0, 0), font=font)
    return canvas


def error_map(
    image: Image.Image | None, gt, pred, *, ignore_index: int = IGNORE_INDEX
) -> Image.Image:
    """Wrong pixels red, right pixels the photo dimmed to 40 %, ignored pixels grey.

    Without a photo (``image=None``) right pixels are black.
    """
    gt_array, pred_array = _labels(gt, "gt"), _labels(pred, "pred")
    if gt_array.shape != pred_array.shape:
        raise ValueError(f"gt shape {gt_array.shape} differs from pred shape {pred_array.shape}")
    if image is None:
        base = np.zeros((*gt_array.shape, 3), dtype=np.float32)
    else:
        base = np.asarray(image.convert("RGB"), dtype=np.float32)
        if base.shape[:2] != gt_array.shape:
            raise ValueError(
                f"label shape {gt_array.shape} does not match the image size "
                f"{base.shape[1]}x{base.shape[0]} (W x H)"
            )
    result = np.rint(base * 0.4).astype(np.uint8)
    ignored = gt_array == ignore_index
    result[~ignored & (gt_array != pred_array)] = ERROR_COLOUR
    result[ignored] = IGNORE_GREY
    return Image.fromarray(result)


def probability_image(prob) -> Image.Image:
    """8-bit grayscale ('L') image of a probability map in [0, 1]: 0 -> black, 1 -> white."""
    array = np.asarray(prob, dtype=np.float64)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"prob must be a (H, W) array, got shape {array.shape}")
    if array.size and (np.isnan(array).any() or array.min() < -1e-6 or array.max() > 1 + 1e-6):
        raise ValueError(
            f"prob must hold probabilities in [0, 1] (apply sigmoid to logits first), "
            f"got {np.nanmin(array):.3g}..{np.nanmax(array):.3g}"
        )
    return Image.fromarray(np.rint(np.clip(array, 0, 1) * 255).astype(np.uint8))


def _heat_colour(values: np.ndarray) -> np.ndarray:
    """Map [0, 1] to a white -> blue -> dark-navy ramp, (..., 3) uint8."""
    anchors = np.array([[255, 255, 255], [107, 174, 214], [8, 48, 107]], dtype=np.float64)
    stops = np.array([0.0, 0.5, 1.0])
    channels = [np.interp(values, stops, anchors[:, i]) for i in range(3)]
    return np.rint(np.stack(channels, axis=-1)).astype(np.uint8)


def confusion_matrix_image(
    matrix, class_names: Sequence[str], *, normalize: bool = True
) -> Image.Image:
    """Heat map of a (K, K) confusion matrix, rows = ground truth, columns = prediction.

    ``normalize=True`` divides each row by its total (each row shows how one ground-truth
    class was predicted; rows with no pixels are grey); otherwise colours scale with counts.
    Cells are labelled with their value while there is room (up to about 20 classes).
    """
    counts = np.asarray(matrix.cpu() if hasattr(matrix, "cpu") else matrix, dtype=np.float64)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"matrix shape {counts.shape} does not match {k} class_names")
    values, empty = _cell_values(counts, normalize)
    cell = int(np.clip(640 // max(k, 1), 16, 56))
    font = _font(max(9, min(cell // 3, 16)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(_text_size(probe, str(name), font)[0] for name in class_names) + 8
    title_height = _text_size(probe, "Ag", font)[1] + 10
    left, top = label_width + title_height, label_width + title_height
    canvas = Image.new("RGB", (left + k * cell + 8, top + k * cell + 8), (255, 255, 255))
    colours = _heat_colour(values)
    colours[empty] = IGNORE_GREY
    heat = Image.fromarray(np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1))
    canvas.paste(heat, (left, top))
    draw = ImageDraw.Draw(canvas)
    _draw_cell_text(draw, counts, values, empty, (left, top), cell, font, normalize)
    _draw_axis_labels(canvas, class_names, (left, top), cell, font, label_width)
    return canvas


def _cell_values(counts: np.ndarray, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Colour values in [0, 1] per cell and the mask of rows without any pixel."""
    totals = counts.sum(axis=1, keepdims=True)
    empty = np.broadcast_to(totals == 0, counts.shape)
    if normalize:
        return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0), empty
    peak = counts.max() if counts.size and counts.max() > 0 else 1.0
    return counts / peak, np.zeros_like(empty)


def _draw_cell_text(draw, counts, values, empty, origin, cell, font, normalize) -> None:
    if cell < 24:
        return
    left, top = origin
    for row, col in np.ndindex(*counts.shape):
        if empty[row, col]:
            continue
        text = f"{100 * values[row, col]:.0f}" if normalize else _short_count(counts[row, col])
        width, height = _text_size(draw, text, font)
        fill = (255, 255, 255) if values[row, col] > 0.55 else (0, 0, 0)
        x = left + col * cell + (cell - width) // 2
        y = top + row * cell + (cell - height) // 2
        draw.text((x, y), text, fill=fill, font=font)


def _short_count(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.0f}{suffix}"
    return f"{value:.0f}"


def _draw_axis_labels(canvas, class_names, origin, cell, font, label_width) -> None:
    """Row names left of the grid, column names rotated above it, and the two axis titles."""
    left, top = origin
    draw = ImageDraw.Draw(canvas)
    for index, name in enumerate(class_names):
        width, height = _text_size(draw, str(name), font)
        y = top + index * cell + (cell - height) // 2
        draw.text((left - width - 4, y), str(name), fill=(0, 0, 0), font=font)
        strip = Image.new("RGB", (label_width, cell), (255, 255, 255))
        ImageDraw.Draw(strip).text((4, (cell - height) // 2), str(name), fill=(0, 0, 0), font=font)
        canvas.paste(strip.rotate(90, expand=True), (left + index * cell, top - label_width))
    span = len(class_names) * cell
    width = _text_size(draw, "prediction", font)[0]
    draw.text((left + max(span - width, 0) // 2, 2), "prediction", fill=(0, 0, 0), font=font)
    title = Image.new("RGB", (span, left - label_width), (255, 255, 255))
    width = _text_size(draw, "ground truth", font)[0]
    ImageDraw.Draw(title).text(
        (max(span - width, 0) // 2, 2), "ground truth", fill=(0, 0, 0), font=font
    )
    canvas.paste(title.rotate(90, expand=True), (0, top))


def panel(images: Sequence[Image.Image], titles: Sequence[str] | None = None) -> Image.Image:
    """Images side by side (top-aligned, white gaps), each under an optional title."""
    if not images:
        raise ValueError("panel needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    font = _font(14)
    title_height = 20 if titles else 0
    gap = 6
    width = sum(image.width for image in images) + gap * (len(images) - 1)
    height = title_height + max(image.height for image in images)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for index, image in enumerate(images):
        canvas.paste(image.convert("RGB"), (x, title_height))
        if titles:
            draw.text((x + 2, 2), titles[index], fill=(0, 0, 0), font=font)
        x += image.width + gap
    return canvas
