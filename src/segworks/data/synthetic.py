"""A built-in synthetic dataset written to disk: discs and square frames that only shape tells
apart.

Both kinds of object are drawn in the same kind of texture (a random colour with mild per-pixel
noise, one distribution for both classes), so a pixel's colour says nothing about its class: a
model has to look at the shape around it (is this stroke part of a square outline, or this
patch part of a filled disc?). Objects are large (0.28 to 0.44 of the image side), never touch
and always stand out from a smooth random gradient, so the outline is clean. A per-pixel
classifier finds the objects but cannot tell a circle from a square; a small U-Net learns both
in about a minute on two CPU cores (`segworks demo`).

Layout (read by `segworks.data.open_source`):
    ROOT/class_names.txt                       background, circle, square
    ROOT/{train,val}/images/NNNN.png           RGB
    ROOT/{train,val}/masks/NNNN.png            palette PNG, index = class
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segworks.data.meta import voc_palette
from segworks.fileio import save_image, save_text

log = logging.getLogger(__name__)

SHAPE_CLASSES = ["background", "circle", "square"]
RADIUS_RANGE = (0.14, 0.22)  # circle radius as a fraction of the image side
MIN_CONTRAST = 70.0  # least distance (RGB, 0..255) between an object's colour and the background
MAX_OBJECTS = 2


def write_shapes_dataset(
    root: str | Path,
    *,
    num_train: int = 384,
    num_val: int = 64,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write the dataset under `root` (deterministic for a seed) and return `root`."""
    root = Path(root)
    if num_train < 1 or num_val < 1 or size < 32:
        raise ValueError(
            f"need num_train, num_val >= 1 and size >= 32, got {num_train}, {num_val}, {size}"
        )
    rng = np.random.default_rng(seed)
    palette = [v for colour in voc_palette(256) for v in colour]
    for split, count in (("train", num_train), ("val", num_val)):
        for index in range(count):
            image, label = render_shapes(rng, size)
            save_image(Image.fromarray(image), root / split / "images" / f"{index:04d}.png")
            mask = Image.fromarray(label)  # "L"; putpalette makes it "P" with the same indices
            mask.putpalette(palette)
            save_image(mask, root / split / "masks" / f"{index:04d}.png")
    save_text("\n".join(SHAPE_CLASSES) + "\n", root / "class_names.txt")
    log.info("wrote %d train + %d val synthetic images to %s", num_train, num_val, root)
    return root


def render_shapes(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (uint8 RGB image (H, W, 3), uint8 labels (H, W)) pair with 1-2 separate objects."""
    image = _background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    placed: list[tuple[float, float, float]] = []  # (cy, cx, radius) of the objects so far
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        spot = _free_spot(rng, size, placed)
        if spot is None:
            continue
        placed.append(spot)
        cls = int(rng.integers(1, len(SHAPE_CLASSES)))
        shape = _shape_mask(size, cls, *spot)
        image[shape] = _texture(rng, size, _mean_colour(image, shape))[shape]
        label[shape] = cls
    return image, label


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    start, end = rng.uniform(40, 215, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    if rng.random() < 0.5:
        ramp = ramp.transpose(1, 0, 2)
    image = start + (end - start) * ramp + rng.normal(0, 4, size=(size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _texture(rng: np.random.Generator, size: int, avoid: np.ndarray | None = None) -> np.ndarray:
    """A random colour with mild per-pixel noise, the same law for every class; the colour is
    redrawn (a few times) while it is closer than MIN_CONTRAST to `avoid`."""
    colour = rng.uniform(20, 255, size=3)
    for _ in range(20):
        if avoid is None or np.linalg.norm(colour - avoid) >= MIN_CONTRAST:
            break
        colour = rng.uniform(20, 255, size=3)
    noise = rng.uniform(0.85, 1.0, size=(size, size, 1))
    return np.clip(colour * noise, 0, 255).astype(np.uint8)


def _mean_colour(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return image[mask].reshape(-1, 3).mean(axis=0)


def _free_spot(
    rng: np.random.Generator, size: int, placed: list[tuple[float, float, float]]
) -> tuple[float, float, float] | None:
    """(cy, cx, radius) of an object inside the image that keeps clear of the others."""
    for _ in range(20):
        radius = rng.uniform(*RADIUS_RANGE) * size
        cy, cx = rng.uniform(radius + 1, size - radius - 1, size=2)
        # 1.26 r is a square's half diagonal: shapes keep a gap of at least 2 pixels
        if all(np.hypot(cy - y, cx - x) > 1.26 * (radius + r) + 2 for y, x, r in placed):
            return cy, cx, radius
    return None


def _shape_mask(size: int, cls: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """A filled circle (cls 1), or the outline of an axis-aligned square (cls 2) with the
    circle's area and a stroke of a fifth of its side."""
    half = radius * np.sqrt(np.pi) / 2  # the square of the circle's area
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if cls == 1:
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=1)
    else:
        stroke = max(2.0, 0.4 * half)
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=1)
        inner = half - stroke
        draw.rectangle((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    return np.asarray(canvas, dtype=bool)
